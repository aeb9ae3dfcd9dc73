"""The collector: record one snapshot of the state table as one collection.

Each snapshot becomes one transaction: new states are inserted with their two
keys and two peers; states whose values changed get their previous values
moved to ``samples`` and the new ones written; open states the snapshot lacks
are closed (the window between the last collection that saw them and this
one); closed states that come back are reopened, their absence kept as a
sample. Recording the same snapshot twice changes nothing but the
collection log. A snapshot older than the newest collection is refused, and
so is a different one of the same time: the history only moves forward.
"""

import dataclasses
import socket
import threading
import time
from collections import Counter
from itertools import compress, repeat
from operator import and_, eq, is_not, itemgetter, lshift, ne, not_, or_, xor
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from pfhistory import queries, sources
from pfhistory.addresses import ntop
from pfhistory.db import write_transaction
from pfhistory.gcpause import cyclic_gc_paused
from pfhistory.exceptions import PFError
from pfhistory.models import PEER_FIELDS
from pfhistory.pfvar import OPENBSD_AF_INET
from pfhistory.statefile import TWO_RECORDS_OF_ONE_STATE

__all__ = ["CollectionResult", "Snapshot", "record_snapshot", "DEFAULT_SAMPLE_RETENTION",
           "FUTURE_SLACK_S", "SNAPSHOT_BEHIND_PFSYNC_S", "refuse_future",
           "expire_samples"]

DEFAULT_SAMPLE_RETENTION = 24 * 3600
_U63 = (1 << 63) - 1
_U64 = 1 << 64
# Fields of an open state's row (queries.open_states).
_CREATORID = itemgetter(0)
_STATE_ID = itemgetter(1)
_KEY = itemgetter(0, 1)
_PK = itemgetter(2)
_VALUES = itemgetter(3)            # dyn_hash, created_at, expires_at folded (_values_hash)
_PEER_HASH = itemgetter(4)
_U32 = 0xFFFFFFFF
# Changed states staged before an apply starts in the background (_Applier),
# and diffed chunks at most waiting for it to end.
_APPLY_BATCH = 65536
_MAX_PENDING_CHUNKS = 8
# Samples expired per collection at most: max_batches times this, so that a
# backlog (a retention just shortened) is worked off over several runs.
_EXPIRE_BATCH = 20000


# How far a snapshot's (or a capture's) time may run ahead of this machine's clock:
# clocks of a firewall and of the host reading its files differ a little.
FUTURE_SLACK_S = 300
# How far a snapshot may be older than the newest pfsync batch. A live table is
# dated once the write lock is held, then read; a listener's batches dated after
# that wait for the collection. A state file (pfctl -S, then collect) is dated by
# its mtime and may be recorded seconds later, while batches go on. A snapshot
# older than this is not that race but an older table, as an older snapshot is.
SNAPSHOT_BEHIND_PFSYNC_S = 300
# The way out an older snapshot's refusal names.
_OLDER_REFUSED = ("the history only moves forward, so older snapshots are refused (record "
                  "them into a history of their own with --db)")


def refuse_future(origin, at, dated):
    """A time after this machine's clock would stay: the history only moves
    forward, and samples expire by it. dated says where the time came from."""
    now = int(time.time())
    if at is not None and at > now + FUTURE_SLACK_S:
        raise PFError(f"{origin}: dated {_iso(int(at))} ({dated}), later than this "
                      f"machine's clock ({_iso(now)}); nothing recorded")


class OlderSnapshotError(PFError):
    """A snapshot older than the newest collection recorded."""


@dataclass
class Snapshot:
    """What to record: where the records come from and when they were taken."""

    source: object          # a state file path, or None for the live /dev/pf
    collected_at: int       # epoch seconds, UTC
    origin: str             # shown in the collections table
    # The live table is dated when it is read, once the write lock is held (a
    # collector may wait for it): collected_at is only the time asked for until then.
    dated_when_read: bool = False


@dataclass
class CollectionResult:
    collection_id: int
    collected_at: int
    states: int
    inserted: int
    updated: int
    reopened: int
    closed: int
    packets: int
    bytes: int
    samples: int
    duration_ms: int


def _signed64(values):
    """PF's unsigned 64-bit ids as the signed integers the database stores."""
    if values and max(values) > _U63:
        return [v - _U64 if v > _U63 else v for v in values]
    return values


def _clamped(values):
    """Counters beyond what a signed BIGINT holds are stored as its maximum."""
    if values and max(values) > _U63:
        return [min(v, _U63) for v in values]
    return values


def _values_hash(dyns, created, expires):
    """The values of states folded into one signed 64-bit integer each, as
    queries.open_states folds them in SQL: dyn_hash XOR (created_at << 32 |
    expires_at & 0xFFFFFFFF), the shift wrapping at 64 bits."""
    folded = list(map(or_, map(lshift, created, repeat(32)), map(and_, expires, repeat(_U32))))
    if folded and (max(folded) > _U63 or min(folded) < -_U63 - 1):
        folded = [((x + (1 << 63)) & (_U64 - 1)) - (1 << 63) for x in folded]
    return map(xor, dyns, folded)


def _address_bin(af, raw):
    """The stored binary form: 4 bytes for IPv4, all 16 otherwise."""
    return raw[:4] if af == OPENBSD_AF_INET else raw


class _Recorder:
    """The work of one collection, chunk by chunk, inside one transaction."""

    def __init__(self, conn, snapshot, collection_id, prev, next_pk, next_addr):
        self.conn = conn
        self.t = snapshot.collected_at
        self.c = collection_id
        self.prev = prev                      # (id, collected_at) or None
        self.next_pk = next_pk
        self.next_addr = next_addr
        self.addr_ids = {}                    # (af, bin) -> id, for this run
        # Read now, before any apply: _plan lays out statements beside one.
        self.parameter_limit = queries.parameter_limit(conn)
        rows = queries.open_states(conn)
        self.open_before = len(rows)
        self.open = _OpenStates(rows)
        del rows
        self.matched = 0                      # records that were open states
        self.any_closed = queries.any_closed_state(conn)
        self.ended_by_pfsync = 0
        self.states = self.inserted = self.updated = self.reopened = 0
        self.new_packets = self.new_bytes = 0
        self.creatorids = Counter()
        self.staged_rows = 0              # staged since the last apply
        self.pending = []                 # diffed chunks not yet written
        self.applier = _Applier()

    # -- per chunk ---------------------------------------------------------------

    def add_chunk(self, c):
        """Diff a chunk against the open states (Python only), then write it
        unless an apply is running in the background: its writes wait, a few
        chunks at most, while the next chunks are diffed."""
        if c.n == 0:
            return
        self.pending.append((c, self._plan(c)))
        if not self.applier.busy() or len(self.pending) >= _MAX_PENDING_CHUNKS:
            self._write_pending()

    def _plan(self, c):
        """What a chunk asks for: which records are open states whose values (or
        also peers) changed, and which are unknown; map/compress, no Python loop
        per state, and no database work (that may run beside an apply)."""
        n = c.n
        self.states += n
        t = self.t
        cids = c["creatorid"]
        sids = _signed64(c["id"])
        dyns = c["dyn_hash"]
        created = [t - x for x in c["creation"]]
        expires = [t + x for x in c["expire"]]
        self.creatorids.update(cids)
        changed = peers_changed = ([], [])       # (indexes in the chunk, pks)
        if self.open:
            recs = self.open.take(cids, sids)
            seen = list(map(is_not, recs, repeat(None)))
            unknown = list(compress(range(n), map(not_, seen)))
            known = list(compress(range(n), seen))
            self.matched += len(known)
            old = list(compress(recs, seen))
            del recs
            diff = list(map(ne, map(_VALUES, old),
                            compress(_values_hash(dyns, created, expires), seen)))
            index = list(compress(known, diff))
            old = list(compress(old, diff))
            changed = (index, list(map(_PK, old)))
            diff = list(map(ne, map(_PEER_HASH, old), map(c["peer_hash"].__getitem__, index)))
            peers_changed = (list(compress(index, diff)), list(compress(changed[1], diff)))
            del old, diff
        else:
            unknown = list(range(n))
        staged = self._staged_rows(c, changed, peers_changed, created, expires) \
            if changed[0] else None
        self.updated += len(changed[0])
        return sids, created, expires, unknown, staged

    def _write_pending(self):
        """Write the chunks diffed so far; start an apply once enough is staged."""
        self.applier.wait()
        for c, (sids, created, expires, unknown, staged) in self.pending:
            self._write(c, sids, created, expires, unknown, staged)
        self.pending.clear()
        if self.staged_rows >= _APPLY_BATCH:
            self.staged_rows = 0
            self.applier.start(queries.apply_staged, self.conn, self.c)

    def _write(self, c, sids, created, expires, unknown, staged):
        cids = c["creatorid"]
        # States absent from this chunk's lookup may be closed ones coming back.
        back = {}
        if unknown and self.any_closed:
            back = queries.closed_states_by_key(self.conn, [(cids[i], sids[i]) for i in unknown])
        new = []
        reopen = []
        reopen_index = []
        for i in unknown:
            rec = back.get((cids[i], sids[i]))
            if rec is None:
                new.append(i)
            elif rec[5] is not None:
                # pfsync reported its removal: it stays ended when pfsync said, even if
                # this snapshot was read a moment before the removal was recorded.
                self.ended_by_pfsync += 1
            else:
                pk, _dyn, _cat, _eat, last_seen, _by = rec
                reopen.append((pk, last_seen, None))
                reopen_index.append(i)
        if reopen:
            queries.reopen_states(self.conn, reopen, self.c)
            self.reopened += len(reopen)
            # Values and peers both staged: the row holds those of its last sighting.
            reopened = (reopen_index, [pk for pk, _ls, _e in reopen])
            self._stage(self._staged_rows(c, reopened, reopened, created, expires))
        if new:
            self._insert(c, new, sids, created, expires)
        if staged is not None:
            self._stage(staged)

    def _addresses(self, c, new):
        """addresses.id for every (af, address) the new states use."""
        uniq = c["uniq"]
        wanted = {}
        for side in ("wire", "stack"):
            afs = c[side + "_af"]
            for name in (side + "_addr0_ref", side + "_addr1_ref"):
                refs = c[name]
                for i in new:
                    wanted[refs[i]] = afs[i]
        rt_refs, rts, state_afs = c["rt_addr_ref"], c["rt"], c["af"]
        for i in new:
            if rts[i]:
                wanted[rt_refs[i]] = state_afs[i]
        pairs = {}
        for ref, af in wanted.items():
            # The af an address was interned with is the key's (or state's) af.
            _kind, uaf, raw = uniq[ref]
            pairs[ref] = (uaf, _address_bin(uaf, raw))
        # In (af, bin) order: the ids new addresses get do not depend on hashing.
        missing = sorted(p for p in set(pairs.values()) if p not in self.addr_ids)
        if missing:
            self.addr_ids.update(queries.address_ids(self.conn, missing))
            fresh = [p for p in missing if p not in self.addr_ids]
            rows = []
            for af, binary in fresh:
                self.addr_ids[(af, binary)] = self.next_addr
                rows.append((self.next_addr, af, binary, ntop(af, binary.ljust(16, b"\0"))))
                self.next_addr += 1
            queries.insert_addresses(self.conn, rows)
        return {ref: self.addr_ids[p] for ref, p in pairs.items()}

    def _insert(self, c, new, sids, created, expires):
        """Insert new states with their keys and peers, column-wise."""
        ids = self._addresses(c, new)
        everything = len(new) == c.n

        def pick(values):
            return values if everything else list(map(values.__getitem__, new))

        def col(name):
            return pick(c[name])

        n = len(new)
        pks = range(self.next_pk, self.next_pk + n)
        self.next_pk += n
        cid = self.c
        names = _ifnames(c)
        rt = col("rt")
        rt_addr = [ids[ref] if r else None for ref, r in zip(col("rt_addr_ref"), rt)]
        packets0, packets1 = _clamped(col("packets0")), _clamped(col("packets1"))
        bytes0, bytes1 = _clamped(col("bytes0")), _clamped(col("bytes1"))
        queries.insert_states(self.conn, [
            pks, col("creatorid"), pick(sids), [names[r] for r in col("ifname_ref")],
            col("rule"), col("anchor"), col("nat_rule"), col("proto"), col("direction"),
            col("af"), col("log"), rt, rt_addr, col("rtableid0"), col("rtableid1"),
            col("max_mss"), col("min_ttl"), col("set_tos"), col("set_prio0"), col("set_prio1"),
            pick(created), pick(expires), packets0, packets1, bytes0, bytes1, col("timeout"),
            col("sync_flags"), col("updates"), col("state_flags"), col("dyn_hash"),
            col("peer_hash"), [cid] * n, [cid] * n])
        key_cols = {}
        for side in ("wire", "stack"):
            key_cols[side] = (
                col(side + "_af"), list(map(ids.__getitem__, col(side + "_addr0_ref"))),
                col(side + "_port0"), list(map(ids.__getitem__, col(side + "_addr1_ref"))),
                col(side + "_port1"), col(side + "_rdomain"))
        mirror = list(map(int, map(eq, zip(*key_cols["wire"]), zip(*key_cols["stack"]))))
        # Rows in (state_pk, side) order, the primary key's: appended, never
        # inserted in the middle.
        both = _interleave(pks, pks)
        queries.insert_keys(self.conn, [
            both, [0, 1] * n,
            *map(_interleave, key_cols["wire"], key_cols["stack"]),
            _interleave(mirror, [0] * n)])
        queries.insert_peers(self.conn, [
            both, [0, 1] * n,
            *(_interleave(col(f"src_{f}"), col(f"dst_{f}")) for f in PEER_FIELDS)])
        self.new_packets += sum(packets0) + sum(packets1)
        self.new_bytes += sum(bytes0) + sum(bytes1)
        self.inserted += n

    def _staged_rows(self, c, changed, peers_changed, created, expires):
        """The new values of changed states and the new peers of those whose
        peers changed, laid out as staging statements (queries.prepare_staging)."""
        col = c.__getitem__
        values = _columns(c.n, changed, [
            col("dyn_hash"), col("peer_hash"), created, expires,
            _clamped(col("packets0")), _clamped(col("packets1")),
            _clamped(col("bytes0")), _clamped(col("bytes1")),
            col("timeout"), col("sync_flags"), col("updates"), col("state_flags")])
        peer_values = _columns(c.n, peers_changed, [
            *(col(f"src_{f}") for f in PEER_FIELDS), *(col(f"dst_{f}") for f in PEER_FIELDS)])
        return queries.prepare_staging(self.parameter_limit, values, peer_values)

    def _stage(self, staged):
        # The staging tables are emptied when a batch starts (after an apply).
        queries.stage_prepared(self.conn, staged, first=self.staged_rows == 0)
        self.staged_rows += staged.rows

    # -- at the end --------------------------------------------------------------

    def finish(self):
        self._write_pending()
        self.applier.wait()
        if self.staged_rows:
            self.applier.run(queries.apply_staged, self.conn, self.c)
        moved_packets, moved_bytes, samples = self.applier.totals
        # Open states the snapshot lacks are closed, except those created after it was
        # taken (pfsync reported them meanwhile): they cannot be in it.
        closed = 0
        if self.open:
            prev_id, prev_at = self.prev if self.prev is not None else (0, 0)
            closed = queries.close_states(self.conn, list(map(_PK, self.open.remaining())),
                                          prev_id, prev_at, self.c, self.t)
        return {
            "states": self.states, "inserted": self.inserted, "updated": self.updated,
            "reopened": self.reopened, "closed": closed,
            "packets": min(self.new_packets + moved_packets, _U63),
            "bytes": min(self.new_bytes + moved_bytes, _U63),
            "samples": samples,
            "creatorid": self.creatorids.most_common(1)[0][0] if self.creatorids else None,
        }


class _OpenStates:
    """The open states not yet matched by a record of the snapshot.

    Rows are (creatorid, state_id, pk, values_hash, peer_hash). They are found
    by state_id alone, an int (a million of them every minute: half the time
    of (creatorid, state_id) tuples), and a match must have the record's
    creatorid too. Only if two open states share a state_id (two creators)
    are they found by the pair.
    """

    def __init__(self, rows):
        self.by_id = dict(zip(map(_STATE_ID, rows), rows))
        if len(self.by_id) < len(rows):
            self.by_id = None
            self.by_key = dict(zip(map(_KEY, rows), rows))

    def __bool__(self):
        return bool(self.by_id if self.by_id is not None else self.by_key)

    def take(self, cids, sids):
        """The open state of each record (None if none), each taken out."""
        if self.by_id is None:
            return list(map(self.by_key.pop, zip(cids, sids), repeat(None)))
        pop = self.by_id.pop
        recs = list(map(pop, sids, repeat(None)))
        found = list(compress(range(len(recs)), map(is_not, recs, repeat(None))))
        wrong = list(compress(found, map(ne, map(_CREATORID, map(recs.__getitem__, found)),
                                         map(cids.__getitem__, found))))
        if wrong:
            # Another creator's state with the same id: put back, and look again
            # for the records that came up empty (one may be that state's own).
            for i in wrong:
                self.by_id[sids[i]] = recs[i]
                recs[i] = None
            for i, rec in enumerate(recs):
                if rec is None:
                    other = self.by_id.get(sids[i])
                    if other is not None and other[0] == cids[i]:
                        recs[i] = pop(sids[i])
        return recs

    def remaining(self):
        return (self.by_id if self.by_id is not None else self.by_key).values()


class _Applier:
    """Runs apply_staged on a second thread while the main thread diffs chunks.

    SQLite runs each of apply's statements (seconds at a million states)
    without Python's lock, so the diffing, pure Python, goes on beside it. The
    connection is never used by both threads at once: the main thread writes
    only after wait(). Moved packets, bytes and samples written add up in totals.
    """

    def __init__(self):
        self.thread = None
        self.error = None
        self.totals = (0, 0, 0)

    def busy(self):
        return self.thread is not None and self.thread.is_alive()

    def start(self, fn, *args):
        self.wait()
        self.thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self.thread.start()

    def run(self, fn, *args):
        self._run(fn, *args)
        self._raise()

    def wait(self):
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        self._raise()

    def _run(self, fn, *args):
        try:
            got = fn(*args)
            self.totals = tuple(a + b for a, b in zip(self.totals, got))
        except BaseException as e:  # re-raised in the main thread by wait()
            self.error = e

    def join_quietly(self):
        """Wait for the thread without raising: another error is on its way out,
        and the transaction must not roll back under a running statement."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def _raise(self):
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _columns(n, chosen, fields):
    """Columns [pks, *fields] of chosen = (ascending indexes in a chunk of n
    records, their pks); a chunk whose every record is chosen is taken as is."""
    index, pks = chosen
    if len(index) < n:
        fields = [list(map(f.__getitem__, index)) for f in fields]
    return [pks, *fields]


def _interleave(a, b):
    """[a0, b0, a1, b1, ...]: the rows of two sides in (state, side) order."""
    out = [None] * (2 * len(a))
    out[0::2] = a
    out[1::2] = b
    return out


def _ifnames(c):
    from pfhistory.pf import ifname_text

    return {ref: ifname_text(raw) for ref, (_kind, _af, raw) in enumerate(c["uniq"])
            if _kind == 1}


def record_snapshot(engine, snapshot, host=None, sample_retention=DEFAULT_SAMPLE_RETENTION,
                    chunk_records=16384):
    """Record one snapshot as one collection, all or nothing."""
    started = time.monotonic()
    host = host or socket.gethostname()
    with cyclic_gc_paused(), write_transaction(engine) as conn:
        if snapshot.dated_when_read:
            snapshot = dataclasses.replace(snapshot, collected_at=int(time.time()))
        newest = queries.latest_collection(conn, kind=0)
        if newest is not None and snapshot.collected_at < newest[1]:
            raise OlderSnapshotError(
                f"{snapshot.origin}: taken at {_iso(snapshot.collected_at)}, before the newest "
                f"collection ({_iso(newest[1])}); {_OLDER_REFUSED}")
        batch = queries.latest_collection(conn, kind=1)
        if batch is not None and snapshot.collected_at < batch[1] - SNAPSHOT_BEHIND_PFSYNC_S:
            raise OlderSnapshotError(
                f"{snapshot.origin}: taken at {_iso(snapshot.collected_at)}, more than "
                f"{SNAPSHOT_BEHIND_PFSYNC_S // 60} minutes before the newest pfsync batch "
                f"({_iso(batch[1])}); {_OLDER_REFUSED}")
        # A state this snapshot lacks was last seen by the snapshot before it, or by the
        # pfsync batch that first reported it if that came later (close_states).
        prev = newest
        collection_id, next_pk, next_addr = queries.next_ids(conn)
        queries.insert_collection(conn, {
            "id": collection_id, "collected_at": snapshot.collected_at,
            "source": snapshot.origin, "host": host, "creatorid": None, "states": 0,
            "inserted": 0, "updated": 0, "reopened": 0, "closed": 0, "packets": 0,
            "bytes": 0, "samples": 0, "duration_ms": 0})
        recorder = _Recorder(conn, snapshot, collection_id, prev, next_pk, next_addr)
        # Into an empty history every state is new: load first, index after.
        bulk_load = next_pk == 1
        if bulk_load:
            queries.drop_load_indexes(conn)
        try:
            for columns in sources.iter_columns(snapshot.source, chunk_records=chunk_records):
                recorder.add_chunk(columns)
            summary = recorder.finish()
            if bulk_load:
                queries.create_load_indexes(conn)
        except IntegrityError:
            recorder.applier.join_quietly()
            raise PFError(f"{snapshot.origin}: {TWO_RECORDS_OF_ONE_STATE}") from None
        except BaseException:
            recorder.applier.join_quietly()
            raise
        if newest is not None and snapshot.collected_at == newest[1] and any(
                summary[k] for k in ("inserted", "updated", "reopened", "closed")):
            # States would end and begin at one instant: not a later table.
            raise OlderSnapshotError(
                f"{snapshot.origin}: taken at {_iso(snapshot.collected_at)}, the time of the "
                f"newest collection, but the table differs from the one recorded then; "
                f"the history only moves forward, so it is refused")
        if (recorder.open_before and not recorder.matched and summary["reopened"]
                and newest is not None and _flipped_back(queries.collection_tallies(
                    conn, newest[0]))):
            # A table that keeps none of the open states yet brings back ended ones
            # swaps the history's table for an earlier one. A firewall's own may do
            # that once (a CARP member that rebooted gets its states back from its
            # peer after its first, near-empty table); twice in a row is two firewalls
            # taking turns in one history, each closing the other's states.
            raise PFError(
                f"{snapshot.origin}: none of the {recorder.open_before} states open in "
                f"the history is in this snapshot (creatorid "
                f"{summary['creatorid']:08x}), yet {summary['reopened']} that had ended "
                f"are, as in the snapshot before it: the tables of two firewalls recorded "
                f"into one history? Each firewall needs a history of its own (--db); "
                f"nothing recorded")
        expire_samples(conn, snapshot.collected_at - sample_retention)
        summary["duration_ms"] = int((time.monotonic() - started) * 1000)
        queries.finish_collection(conn, collection_id, summary)
    summary.pop("creatorid")
    return CollectionResult(collection_id=collection_id,
                            collected_at=snapshot.collected_at, **summary)


def _flipped_back(tallies):
    """Whether a collection's tallies say it kept none of the open states (it
    closed some, and its states were all new or reopened) and reopened some."""
    states, inserted, reopened, closed = tallies
    return reopened > 0 and closed > 0 and states == inserted + reopened


def expire_samples(conn, before_at, max_batches=50):
    """Drop samples (values, then peers) only collections before before_at
    needed, at most max_batches * _EXPIRE_BATCH of each. Returns how many
    values samples were dropped."""
    first_kept = queries.collection_before(conn, before_at)
    if first_kept is None:
        return 0
    dropped = _expire(conn, first_kept, max_batches, peers=False)
    _expire(conn, first_kept, max_batches, peers=True)
    return dropped


def _expire(conn, first_kept, max_batches, peers):
    most = _EXPIRE_BATCH * max_batches
    dropped = 0
    while dropped < most:
        n = queries.expire_samples(conn, first_kept, most - dropped, peers=peers)
        if n == 0:
            break
        dropped += n
    return dropped


def _iso(epoch):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()
