"""What happened on the firewall in a period: the figures of `pfhistory report`.

Everything comes from three small sources, so a day of a 100,000-state
firewall (about 12 million states) reports in seconds: the collections
(coverage, concurrent and new states, bytes per interval), the hourly rollups
(top lists, half-open and bursty sources; see pfhistory.rollup), and indexed
lookups of a few states (longest-lived, largest, open for days). The hour not
yet complete, which the rollups do not hold yet, is computed for the report
(one pass over that hour's states) and read beside them. The report
is a list of sections of named tables; renderers (pfhistory.report_format)
print the same tables as text, csv, json or html, so every format carries the
same numbers.
"""

from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import datetime, timezone
from statistics import median

from pfhistory import queries
from pfhistory import rollup as R
from pfhistory.exceptions import PFError
from pfhistory.protocols import PROTOCOL_NAMES
from pfhistory.pfvar import PF_OUT
from pfhistory.timespec import format_duration, format_epoch

__all__ = ["Report", "Section", "Table", "Chart", "build_report"]

TOP = 10
# A gap: an interval longer than this many times the usual one.
GAP_FACTOR = 1.5
# "Open for days": alive at the end of the period, and open at least this long
# when last seen (the history knows nothing after its newest collection).
LONG_OPEN_S = 86400
# A source opening far more states than usual: at least this many new states
# in one hour, and at least BURST_FACTOR times its usual (median) hourly count.
BURST_MIN = 100
BURST_FACTOR = 10
# Hours before the period that also tell what is usual for a source.
USUAL_LOOKBACK_S = 7 * 86400
CHART_HOSTS = 5


@dataclass
class Table:
    """Rows of plain values (int, str, None); kinds say how to show each column:
    'text', 'int', 'bytes', 'time' (epoch s), 'duration' (s)."""

    key: str
    title: str
    columns: list
    kinds: list
    rows: list = field(default_factory=list)
    note: str = ""


@dataclass
class Chart:
    """A chart drawn from a table: x from column x, one line or bar per column in ys."""

    key: str
    title: str
    table: str
    x: int
    ys: list
    style: str = "line"     # or "bar"


@dataclass
class Section:
    key: str
    title: str
    lines: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    charts: list = field(default_factory=list)


@dataclass
class Report:
    since: int
    until: int
    generated_at: int
    database: str
    sections: list = field(default_factory=list)


_PORTED = (6, 17, 132)


def _endpoint(addr, port):
    """addr:port as pfctl prints it (addr[port] for IPv6)."""
    return f"{addr}[{port}]" if ":" in addr else f"{addr}:{port}"


def _service(proto, port):
    name = PROTOCOL_NAMES.get(proto, str(proto))
    return name if port == 0 and proto not in (6, 17) else f"{name}/{port}"


def _rule(rule, anchor):
    r = "none" if rule == 0xFFFFFFFF else str(rule)
    return r if anchor == 0xFFFFFFFF else f"{r} (anchor {anchor})"


def build_report(conn, since, until, database="", top=TOP, now=None):
    """The report of [since, until] (epoch seconds) from an open connection."""
    if until < since:
        raise PFError(f"--until ({format_epoch(until)}) is before --since ({format_epoch(since)})")
    rep = Report(since=since, until=until, database=database,
                 generated_at=int(now if now is not None else
                                  datetime.now(timezone.utc).timestamp()))
    colls = queries.collections_between(conn, since, until)
    batches = queries.batches_between(conn, since, until)
    before, after, first_id = queries.collection_neighbours(conn, since, until)
    rep.sections.append(_coverage(colls, since, until, before, after, batches))
    _recorded_by(rep.sections[-1], queries.recorders_between(conn, since, until))
    if not colls and not batches:
        return rep
    b = _Builder(conn, rep, colls, batches, since, until, first_id, top)
    b.overview()
    b.top_lists()
    b.odd()
    return rep


def _recorded_by(sec, recorders):
    """Which machine and which pf (its creatorid) the period's collections came
    from: the report of one firewall's history names that firewall, and a
    creatorid that changed says pf restarted, or that another table got in."""
    if not recorders:
        return
    sec.tables.append(Table(
        "recorded_by", "Recorded from",
        ["source", "host", "creatorid", "collections", "first", "last"],
        ["text", "text", "text", "int", "time", "time"],
        [("pfsync" if kind else "snapshots", host,
          None if cid is None else f"{cid:08x}", n, first, last)
         for kind, host, cid, n, first, last in recorders],
        note="creatorid: the pf that created most of a collection's states "
             "(pf_status.hostid, new at each boot unless pf.conf sets one)"))
    snapshot_ids = {cid for kind, _h, cid, *_ in recorders if kind == 0 and cid is not None}
    if len(snapshot_ids) > 1:
        sec.lines.append(
            f"Most states of the period's snapshots were created by {len(snapshot_ids)} "
            f"pfs (creatorids): the other member of a CARP pair took over creating states "
            f"(pfsync brings them to both tables), pf was restarted (a reboot), or another "
            f"firewall's table was recorded into this history, which cannot keep two "
            f"firewalls apart (one history per firewall).")


def _coverage(colls, since, until, before, after, batches=()):
    sec = Section("coverage", "Coverage")
    times = [c[1] for c in colls]
    gaps_t = Table("gaps", "Gaps between collections (blind spots)",
                   ["from", "to", "length"], ["time", "time", "duration"])
    summary = Table("coverage", "Collections in the period",
                    ["collections", "first", "last", "usual interval"],
                    ["int", "time", "time", "duration"])
    sec.tables += [summary, gaps_t]
    if batches:
        sec.tables.append(Table("batches", "pfsync batches in the period",
                                ["batches", "first", "last"], ["int", "time", "time"],
                                [(len(batches), batches[0][1], batches[-1][1])]))
    if not times:
        summary.rows = [(0, None, None, None)]
        if batches:
            # Not a blind spot: pfsync covered it, for all the history can tell.
            gaps_t.note = "None can be told from pfsync batches alone."
            # pfsync batches are collections of the states pfsync announced, not of
            # the whole table: no gap between them can be told from a quiet spell.
            sec.lines.append(
                f"No snapshot was taken between {format_epoch(since)} and {format_epoch(until)}; "
                f"the history holds {len(batches):,} pfsync batches of it, from "
                f"{format_epoch(batches[0][1])} to {format_epoch(batches[-1][1])}: the states "
                f"pfsync announced as they were created, changed and removed. No snapshot "
                f"counted the whole table, so concurrent states are not known, and a time the "
                f"listener was not running does not show as a gap.")
        else:
            gaps_t.rows = [(since, until, until - since)]
            sec.lines.append(f"No collection was taken between {format_epoch(since)} and "
                             f"{format_epoch(until)}: the history knows nothing of this period.")
        return sec
    steps = [b - a for a, b in zip(times, times[1:])]
    if before is not None:
        steps.insert(0, times[0] - before)
    usual = median(steps) if steps else None
    summary.rows = [(len(times), times[0], times[-1], int(usual) if usual else None)]
    if usual:
        limit = usual * GAP_FACTOR
        edges = [(max(before, since) if before is not None else since, times[0])]
        edges += list(zip(times, times[1:]))
        edges.append((times[-1], min(after, until) if after is not None else until))
        for a, b in edges:
            if b - a > limit:
                gaps_t.rows.append((a, b, b - a))
    if gaps_t.rows:
        blind = sum(r[2] for r in gaps_t.rows)
        sec.lines.append(
            f"{len(gaps_t.rows)} gap(s) longer than {GAP_FACTOR}x the usual interval "
            f"({format_duration(usual)}), {format_duration(blind)} in all: connections that began and ended "
            f"inside a gap are not in the history.")
    else:
        sec.lines.append(f"No gaps: {len(times):,} collections, one every {format_duration(usual)}."
                         if usual else "One collection only: nothing between collections "
                                       "can be told.")
    return sec


class _Builder:
    def __init__(self, conn, rep, colls, batches, since, until, first_id, top):
        self.conn, self.rep, self.colls, self.batches = conn, rep, colls, batches
        self.since, self.until, self.first_id, self.top = since, until, first_id, top
        self.hour_lo = since - since % 3600
        self.hour_hi = -(-until // 3600) * 3600     # rollup hours are (h, h + 3600]
        # Hours not yet in rollups (the newest, incomplete): computed now, read with them.
        self.open_hours, self.open_expired = R.open_rollups(conn, self.hour_lo, self.hour_hi)
        self.totals = {}
        # Small dimensions whole; hosts (a day can name a million remote
        # addresses) as the keys that rank in some top list.
        small = (R.SERVICE, R.RULE, R.INTERFACE, R.NAT, R.PUBLISHED, R.LARGEST)
        for dim, key, key2, label, *sums in queries.rollup_totals(
                conn, small, self.hour_lo, self.hour_hi, pending=True):
            self.totals.setdefault(dim, []).append((key, key2, label, *map(int, sums)))
        for dim in (R.LOCAL, R.REMOTE, R.SOURCE):
            self.totals[dim] = [
                (key, key2, label, *map(int, sums)) for key, key2, label, *sums in
                queries.rollup_top(conn, dim, self.hour_lo, self.hour_hi,
                                   max(top, CHART_HOSTS), pending=True)]
        self.addr = {}

    def _texts(self, ids):
        missing = [i for i in ids if i not in self.addr]
        if missing:
            self.addr.update(queries.address_texts(self.conn, missing))
        return self.addr

    # -- overview ----------------------------------------------------------------

    def overview(self):
        colls = self.colls
        sec = Section("overview", "Overview")
        # The history's first collection is its baseline: what its states moved
        # and when they began cannot be placed in an interval. A collection at
        # since counts what happened before it: the period is (since, until], as
        # for rollups, so that the totals of adjacent periods add up.
        counted = [c for c in colls if c[0] != self.first_id and c[1] > self.since]
        # pfsync batches (as rollups count them): the states they first saw or ended,
        # and what moved, each in the interval of the next snapshot.
        batches = [b for b in self.batches if b[0] != self.first_id and b[1] > self.since]
        into = {}
        times = [c[1] for c in colls]
        for b in batches:
            i = bisect_left(times, b[1])
            if i < len(times):
                into.setdefault(colls[i][0], []).append(b)
        new = sum(c[3] for c in counted) + sum(b[2] for b in batches)
        ended = sum(c[4] for c in counted) + sum(b[3] for b in batches)
        moved_b = sum(c[6] for c in counted) + sum(b[5] for b in batches)
        moved_p = sum(c[5] for c in counted) + sum(b[4] for b in batches)
        t = Table("overview", "The period in numbers", ["measure", "value"], ["text", "int"])
        if colls:
            ids = [c[0] for c in colls] + [b[0] for b in self.batches]
            seen = queries.states_seen(self.conn, min(ids), max(ids))
            peak = max(colls, key=lambda c: (c[2], -c[1]))
            t.note = f"Peak at {format_epoch(peak[1])}. "
            sec.lines.append(f"Peak: {peak[2]:,} concurrent states at {format_epoch(peak[1])}.")
        else:
            seen, peak = None, (None, None, None)
            sec.lines.append("pfsync batches only: no snapshot counted the whole table, so "
                             "the states seen and the peak of concurrent states are not known. "
                             "Bytes and packets are those of pfsync's whole state records "
                             "(inserts, full and bulk updates): its compressed updates carry "
                             "no counters, so what states moved after them is not counted.")
        t.rows = [("states seen", seen), ("new states", new), ("ended states", ended),
                  ("peak concurrent states", peak[2]), ("bytes moved", moved_b),
                  ("packets moved", moved_p)]
        t.note += ("New and ended states are those first seen and last seen between "
                   "collections; states that began and ended between two collections are "
                   "not counted. A collection at the period's start holds what happened "
                   "before it and is left out of these totals, so adjacent periods add up.")
        if batches and colls:
            t.note += (f" With the {len(batches):,} pfsync batches of the period: the states "
                       f"they saw begin or end are counted, each batch in the interval of the "
                       f"next snapshot (those after the last one in these totals only).")
        elif batches:
            t.note += (f" From the {len(batches):,} pfsync batches of the period (the "
                       f"history's first collection, its baseline, left out).")
        if self.open_hours:
            hours = ", ".join(format_epoch(w.hour) for w in self.open_hours)
            sec.lines.append(f"Hours not yet in the rollups, computed for this report: "
                             f"{hours} (the newest is not complete: later collections "
                             f"will add to it).")
        # pfsync batches too: a period of batches alone has hours rolled up so.
        partial = [c for c in colls if c[7] == 2] + [b for b in self.batches if b[6] == 2]
        if partial or self.open_expired:
            sec.lines.append(f"{len(partial) or 'Some'} collection(s) were rolled up after "
                             f"samples they needed expired: top lists count what moved "
                             f"only where the samples were kept, and all new states.")
        sec.lines.append(
            f"Top lists count whole UTC hours: {format_epoch(self.hour_lo)} to {format_epoch(self.hour_hi)}.")
        series = Table("timeline", "Per collection", ["time", "concurrent states",
                                                       "new states", "ended states",
                                                       "bytes moved"],
                       ["time", "int", "int", "int", "bytes"])
        def plus(c, i, j):
            """A snapshot's figure and those of the batches in its interval."""
            if c[0] == self.first_id:
                return None
            return c[i] + sum(b[j] for b in into.get(c[0], ()))

        series.rows = [(c[1], c[2], plus(c, 3, 2), plus(c, 4, 3), plus(c, 6, 5))
                       for c in colls]
        if not colls:
            # Batches come every fraction of a second: one row per minute (m, m + 60].
            minutes = {}
            for b in batches:
                row = minutes.setdefault(-(-b[1] // 60) * 60, [0, 0, 0])
                row[0] += b[2]
                row[1] += b[3]
                row[2] += b[5]
            series.title = "Per minute (pfsync batches)"
            series.rows = [(m, None, *v) for m, v in sorted(minutes.items())]
        sec.tables += [t, series]
        sec.charts += [Chart("concurrent", "Concurrent states", "timeline", 0, [1]),
                       Chart("new", "New states per interval", "timeline", 0, [2], "bar"),
                       Chart("bytes", "Bytes per interval", "timeline", 0, [4], "bar")]
        self.rep.sections.append(sec)
        self.overview_section = sec

    # -- top lists ---------------------------------------------------------------

    def _ranked(self, dim, sort, limit=None):
        rows = self.totals.get(dim, [])
        return sorted(rows, key=sort)[:limit or self.top]

    def top_lists(self):
        sec = Section("top", "Top lists")
        top = self.top
        by_out = lambda r: (-r[7], -r[8], r[0])        # noqa: E731  bytes_out
        by_in = lambda r: (-r[8], -r[7], r[0])         # noqa: E731
        by_states = lambda r: (-r[3], -(r[7] + r[8]), r[0])   # noqa: E731
        by_total = lambda r: (-(r[7] + r[8]), -r[3], r[0], r[1], r[2])   # noqa: E731
        host_cols = ["host", "sent", "received", "connections"]
        host_kinds = ["text", "bytes", "bytes", "int"]
        for dim, who in ((R.LOCAL, "local"), (R.REMOTE, "remote")):
            for key, title, sort in (("bytes_out", "by bytes sent", by_out),
                                     ("bytes_in", "by bytes received", by_in),
                                     ("connections", "by connections", by_states)):
                rows = self._ranked(dim, sort)
                names = self._texts([r[0] for r in rows])
                sec.tables.append(Table(
                    f"{who}_{key}", f"{who.capitalize()} hosts {title}", host_cols,
                    host_kinds, [(names.get(r[0], f"#{r[0]}"), r[7], r[8], r[3])
                                 for r in rows]))
        sec.tables[0].note = ("Local hosts: addresses in the local networks the collector "
                              "was given; connections: states first seen in the period.")
        svc = self._ranked(R.SERVICE, by_total)
        sec.tables.append(Table("services", "Services (protocol/port) by bytes",
                                ["service", "connections", "bytes to", "bytes from"],
                                ["text", "int", "bytes", "bytes"],
                                [(_service(r[1], r[0]), r[3], r[7], r[8]) for r in svc],
                                note="bytes to: sent by the initiator; from: its answers."))
        rules = self.totals.get(R.RULE, [])
        for key, title, sort in (("rules_states", "Rules by states", by_states),
                                 ("rules_bytes", "Rules by bytes", by_total)):
            rows = sorted(rules, key=sort)[:top]
            sec.tables.append(Table(key, title, ["rule", "states", "bytes"],
                                    ["text", "int", "bytes"],
                                    [(_rule(r[0], r[1]), r[3], r[7] + r[8]) for r in rows]))
        anchors = {}
        for r in rules:
            if r[1] != 0xFFFFFFFF:
                a = anchors.setdefault(r[1], [0, 0])
                a[0] += r[3]
                a[1] += r[7] + r[8]
        arows = sorted(anchors.items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))[:top]
        sec.tables.append(Table("anchors", "Anchors by bytes", ["anchor", "states", "bytes"],
                                ["text", "int", "bytes"],
                                [(str(a), v[0], v[1]) for a, v in arows]))
        ifs = self._ranked(R.INTERFACE, by_total)
        sec.tables.append(Table("interfaces", "Interfaces by bytes",
                                ["interface", "states", "bytes"], ["text", "int", "bytes"],
                                [(r[2], r[3], r[7] + r[8]) for r in ifs]))
        nat = self._ranked(R.NAT, by_states)
        names = self._texts([r[0] for r in nat])
        sec.tables.append(Table("nat_addresses", "NAT: translated addresses by states",
                                ["address", "states", "bytes"], ["text", "int", "bytes"],
                                [(names.get(r[0], "?"), r[3], r[7] + r[8]) for r in nat]))
        pub = self._ranked(R.PUBLISHED, by_states)
        names = self._texts([r[0] for r in pub] + [r[1] for r in pub])
        rows = []
        for r in pub:
            proto, public_port, port = map(int, r[2].split("/"))
            rows.append((f"{names.get(r[0], '?')} {_service(proto, public_port)}",
                         _endpoint(names.get(r[1], "?"), port), r[3], r[7] + r[8]))
        sec.tables.append(Table(
            "nat_ports", "NAT: published (rdr) addresses and ports by states",
            ["published", "to", "states", "bytes"], ["text", "text", "int", "bytes"], rows))
        # Longest-lived: a connection seen in the period that lived longer than
        # the period was alive at its start or at its end.
        rows = {}
        for at in (self.since, self.until):
            rows.update((r[0], r) for r in self._alive(at, top)[1])
        longest = sorted(rows.values(), key=lambda r: (-(min(r[16], self.until) - r[15]),
                                                       r[0]))[:top]
        t = self._connections("longest", "Longest-lived connections", longest)
        t.note = ("Among the connections alive at the start or the end of the period; "
                  "any other lived less than the period.")
        sec.tables.append(t)
        cand = [r[0] for r in self._ranked(R.LARGEST, lambda r: (-r[7], r[0]), top * 5)]
        rows = queries.states_by_pk(self.conn, cand)
        rows.sort(key=lambda r: (-(r[18] + r[19]), r[0]))
        sec.tables.append(self._connections(
            "largest", "Largest connections (bytes in their life)", rows[:top],
            note="Among the 25 states that moved the most in each hour."))
        self.rep.sections.append(sec)
        self._host_chart()

    def _alive(self, at, limit, open_for=None):
        """(count, longest-lived rows) of the states alive at instant at: those first
        seen by any collection by then, snapshot or pfsync batch (a batch after the
        last snapshot may be the first to report a state opened days ago)."""
        newest = queries.collection_at_or_before(self.conn, at)
        if newest is None:
            return 0, []
        snapshot = queries.collection_states_at(self.conn, at)
        # Ids follow time but for one race (pfhistory.rollup): a snapshot read before
        # a pfsync batch and recorded after it. So every collection by then has an id
        # at most the newest one's or the newest snapshot's, whichever is larger.
        last_id = max(newest[0], snapshot[0] if snapshot else 0)
        # How many states the snapshot counted only picks the scan below (unknown
        # without one).
        alive = snapshot[1] if snapshot else 0
        pk_max = queries.first_pk_after(self.conn, last_id) - 1
        # Scan whichever is smaller: the states first seen by then (pk range)
        # or those that ended after it (about the later ones plus the live ones).
        by_rowid = pk_max < (queries.max_pk(self.conn) - pk_max) + alive
        return queries.states_alive_at(self.conn, at, pk_max, self.until, limit,
                                       open_for=open_for, by_rowid=by_rowid)

    def _connections(self, key, title, rows, note=""):
        out = []
        for (pk, proto, direction, ifname, rule, anchor, wa0, wp0, wa1, wp1, sa0, sp0, sa1,
             sp1, mirror, created, last, ended, b0, b1, _p0, _p1, afto) in rows:
            ep = _endpoint if proto in _PORTED else (lambda a, _p: a)
            if afto:
                # As pfctl prints it: the initiator, to the responder after
                # translation, via the initiator's new source (the stack key's [1]).
                src, dst, via = ep(wa0, wp0), ep(sa0, sp0), ep(sa1, sp1)
            else:
                if direction == PF_OUT:
                    src, dst = ep(sa1, sp1), ep(wa0, wp0)
                else:
                    src, dst = ep(wa0, wp0), ep(sa1, sp1)
                via = "" if mirror or (wa1 == sa1 and wp1 == sp1) else ep(wa1, wp1)
            end = min(last, self.until)
            out.append((PROTOCOL_NAMES.get(proto, str(proto)), src, dst, via,
                        _rule(rule, anchor), ifname, created, end - created, b0 + b1,
                        "open" if ended is None or ended > self.until else "ended"))
        return Table(key, title, ["proto", "from", "to", "via (NAT)", "rule", "interface",
                                  "created", "lived", "bytes", "state"],
                     ["text", "text", "text", "text", "text", "text", "time", "duration",
                      "bytes", "text"], out, note)

    def _host_chart(self):
        rows = self._ranked(R.LOCAL, lambda r: (-(r[7] + r[8]), -r[3], r[0]), CHART_HOSTS)
        keys = [r[0] for r in rows]
        names = self._texts(keys)
        hourly = queries.rollup_hourly(self.conn, R.LOCAL, keys, self.hour_lo, self.hour_hi,
                                       pending=True)
        by_hour = {}
        for hour, key, _states, bout, bin_ in hourly:
            by_hour.setdefault(hour, {})[key] = int(bout) + int(bin_)
        t = Table("top_host_bytes", "Bytes per hour of the top local hosts",
                  ["hour"] + [names.get(k, "?") for k in keys],
                  ["time"] + ["bytes"] * len(keys))
        t.rows = [(h, *(by_hour[h].get(k, 0) for k in keys)) for h in sorted(by_hour)]
        sec = self.overview_section
        sec.tables.append(t)
        sec.charts.append(Chart("top_hosts", "Bytes per hour, top local hosts",
                                "top_host_bytes", 0, list(range(1, len(keys) + 1))))

    # -- things that look odd ----------------------------------------------------

    def odd(self):
        sec = Section("odd", "Things that look odd")
        top = self.top
        half = sorted((r for r in self.totals.get(R.SOURCE, []) if r[4]),
                      key=lambda r: (-r[4], -r[3], r[0]))[:top]
        names = self._texts([r[0] for r in half])
        sec.tables.append(Table(
            "halfopen", "Half-open TCP states (SYN_SENT / SYN_RCVD) by source",
            ["source", "half-open", "new states", "share"], ["text", "int", "int", "text"],
            [(names.get(r[0], "?"), r[4], r[3], f"{100 * r[4] / max(r[3], 1):.0f}%")
             for r in half],
            note="TCP states first seen before either side was ESTABLISHED."))
        sec.tables.append(self._bursts())
        total, rows = self._alive(self.until, top, open_for=LONG_OPEN_S)
        t = self._connections("open_for_days",
                              f"Connections open for more than {format_duration(LONG_OPEN_S)}", rows)
        t.note = f"{total:,} in all at {format_epoch(self.until)}; the oldest are listed."
        sec.tables.append(t)
        sec.lines.append(f"{total:,} connection(s) had been open for more than "
                         f"{format_duration(LONG_OPEN_S)} at the end of the period.")
        self.rep.sections.append(sec)

    def _bursts(self):
        """Sources whose new states in one hour far exceed their usual hourly count."""
        t = Table("bursts", "Sources opening far more states than usual",
                  ["source", "hour", "new states", "usual per hour", "times usual"],
                  ["text", "time", "int", "int", "text"])
        t.note = (f"At least {BURST_MIN} new states in one hour and {BURST_FACTOR}x the "
                  f"source's median count in the other hours with collections (snapshots or "
                  f"pfsync batches) of the period and the week before (the hour of the "
                  f"history's first collection, its baseline, left out).")
        lo = self.hour_lo - USUAL_LOOKBACK_S
        # The hours collections fell in, snapshots and pfsync batches alike, as the
        # rollups count them (stored, or computed for the period). In the hour of the
        # history's first collection all its states count as new: that hour is
        # neither a burst nor what is usual.
        hours = queries.rollup_hours_between(self.conn, lo, self.hour_hi)
        hours += [(w.hour, w.first) for w in self.open_hours]
        baseline = {hour for hour, first in hours if first == self.first_id}
        covered = sorted({hour for hour, _first in hours} - baseline)
        period = queries.rollup_bursts(self.conn, R.SOURCE, self.hour_lo, self.hour_hi,
                                       BURST_MIN, pending=True)
        peaks = {}
        for hour, key, states in period:
            if hour not in baseline and states > peaks.get(key, (0, 0))[1]:
                peaks[key] = (hour, states)
        if not peaks:
            return t
        hist = queries.rollup_hourly(self.conn, R.SOURCE, sorted(peaks), lo, self.hour_hi,
                                     pending=True)
        counts = {}
        for hour, key, states, _o, _i in hist:
            counts.setdefault(key, {})[hour] = int(states)
        found = []
        for key, (hour, states) in peaks.items():
            # usual: the median of its other hours (an hour with collections
            # and none of its states counts as 0)
            series = [counts.get(key, {}).get(h, 0) for h in covered if h != hour]
            if not series:
                continue        # no other hour to compare with: nothing is usual yet
            usual = median(series)
            if states >= BURST_FACTOR * max(usual, 1):
                found.append((key, hour, states, usual))
        found.sort(key=lambda f: (-f[2], f[0]))
        names = self._texts([f[0] for f in found[:self.top]])
        t.rows = [(names.get(k, "?"), h, s, int(u), f"{s / max(u, 1):.0f}x")
                  for k, h, s, u in found[:self.top]]
        return t
