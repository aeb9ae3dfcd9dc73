"""Recording pfsync events into the history, in batches, beside the cron collector.

Each batch (N packets or T milliseconds) is one transaction and one collection of kind 1,
dated by its last packet; messages apply in order, as pf-formats.md section 4.4 says:

- INS and UPD carry a whole record: an unknown state is inserted (created_at is the
  packet's time minus the record's age), a known one takes the record's values, the
  previous ones kept as a sample, as a collection would;
- UPD_C changes a known state's peers and timeout; for a state never seen whole it is
  recorded in ``partial_states`` (known by identity only), never given invented keys;
- DEL, DEL_C and CLR end states at the packet's time (``ended_by`` 1): exact, so a
  snapshot read a moment before is not allowed to reopen them, and a state a collection
  had closed in a window gets its exact end;
- INS_ACK, UPD_REQ, BUS and TDB change nothing.

Several messages about one state in a batch collapse to their net effect (samples are per
batch, as they are per collection). A pfsync-ended state stays ended: later messages about
it are counted as stale, as are updates that would move a peer backwards (the kernel's
staleness rule). A malformed packet is counted and skipped whole.
"""

import socket
import time
from collections import Counter

from pfhistory import _native, pfsync, queries
from pfhistory.collector import _clamped, _Recorder, _signed64, refuse_future
from pfhistory.db import write_transaction
from pfhistory.exceptions import PFError
from pfhistory.pfvar import PF_TCPS_PROXY_SRC, TCPS_SYN_SENT

__all__ = ["SyncRecorder", "BatchResult", "DEFAULT_BATCH_PACKETS", "DEFAULT_BATCH_MS"]

DEFAULT_BATCH_PACKETS = 512
DEFAULT_BATCH_MS = 200
_U63 = (1 << 63) - 1
_U64 = 1 << 64
_PF_TCPS_PROXY_SRC = PF_TCPS_PROXY_SRC
_TCPS_SYN_SENT = TCPS_SYN_SENT
_STATE_ACTIONS = (pfsync.ACT_INS, pfsync.ACT_UPD, pfsync.ACT_UPD_C, pfsync.ACT_DEL,
                  pfsync.ACT_DEL_C)


class _Net:
    """What one batch says about one state: the last whole record, compressed peers sent
    after it, the end, and when it was first and last spoken of."""

    __slots__ = ("first_at", "last_at", "full_at", "record", "peers_at", "src", "dst",
                 "timeout", "updates", "end_at")

    def __init__(self, at):
        self.first_at = self.last_at = at
        self.full_at = self.record = self.peers_at = self.end_at = None
        self.src = self.dst = self.timeout = None
        self.updates = 0


class BatchResult:
    """Counts of one committed batch."""

    __slots__ = ("collection_id", "collected_at", "packets", "messages", "inserted",
                 "updated", "reopened", "ended", "partial", "stale", "malformed", "samples")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)


class _Batch(_Recorder):
    """The collector's insertion of whole records, without its snapshot bookkeeping."""

    def __init__(self, conn, collection_id, collected_at, next_pk, next_addr):
        self.conn = conn
        self.t = collected_at
        self.c = collection_id
        self.next_pk = next_pk
        self.next_addr = next_addr
        self.addr_ids = {}
        self.inserted = 0
        self.new_packets = self.new_bytes = 0
        self.staged_any = False
        self.creatorids = Counter()
        # What the states a whole record updated moved since their previous values.
        self.moved_packets = self.moved_bytes = 0


class SyncRecorder:
    """Collects decoded pfsync packets and writes them in batches (``flush``).

    ``origin`` names the source in the collections table ("pfsync em1", a pcap's path).
    ``add`` takes a datagram (IP header on) or, with ``ip=False``, a bare pfsync packet
    (a pfsync0 capture); it never raises for bad packets, it counts them.
    """

    def __init__(self, engine, origin, host=None, batch_packets=DEFAULT_BATCH_PACKETS,
                 batch_ms=DEFAULT_BATCH_MS):
        self.engine = engine
        self.origin = origin
        self.host = host or socket.gethostname()
        self.batch_packets = max(1, batch_packets)
        self.batch_s = max(0, batch_ms) / 1000.0
        self.pending = []            # (at, messages) of valid packets, in arrival order
        self.pending_malformed = 0
        self.first_at = None         # time of the first pending packet (its clock)
        self.malformed = Counter()   # reason -> packets, since the start
        self.totals = Counter()
        self._partials = None        # whether partial_states may hold rows
        self._rollup_after = None    # a batch later than this completes an hour

    # -- receiving -------------------------------------------------------------------

    def add(self, at, data, ip=True, clock=None):
        """Queue one packet received at ``at`` (epoch seconds). ``clock`` is the time the
        batch deadline runs on (default ``at``). Returns True when a flush is due."""
        self.totals["packets"] += 1
        try:
            packet = pfsync.decode_ip(data)[1] if ip else pfsync.decode(data)
        except pfsync.MalformedPacket as e:
            self.malformed[e.reason] += 1
            self.pending_malformed += 1
            packet = None
        if packet is not None:
            self.totals["messages"] += len(packet.messages)
            self.totals["skipped_blocks"] += packet.skipped
            if packet.messages:
                self.pending.append((at, packet.messages))
        if self.first_at is None:
            self.first_at = at if clock is None else clock
        return self.due(at if clock is None else clock)

    def due(self, now):
        """True when the pending packets should be written (N packets or T ms)."""
        if self.first_at is None:
            return False
        return (len(self.pending) + self.pending_malformed >= self.batch_packets
                or now - self.first_at >= self.batch_s)

    # -- writing ---------------------------------------------------------------------

    def flush(self):
        """Write the pending packets as one transaction; returns a BatchResult or None.
        On a database error the packets stay pending (and the error is raised)."""
        if not self.pending and not self.pending_malformed:
            self.first_at = None
            return None
        started = time.monotonic()
        result = BatchResult()
        with write_transaction(self.engine) as conn:
            self._write(conn, result)
            result.malformed = self.pending_malformed
            queries.finish_collection(conn, result.collection_id, {
                "states": result.messages, "inserted": result.inserted,
                "updated": result.updated, "reopened": result.reopened,
                "closed": result.ended, "samples": result.samples,
                "malformed": result.malformed,
                "duration_ms": int((time.monotonic() - started) * 1000)})
        self.totals.update({k: getattr(result, k) for k in (
            "inserted", "updated", "reopened", "ended", "partial", "stale", "samples")})
        self.totals["batches"] += 1
        self.pending = []
        self.pending_malformed = 0
        self.first_at = None
        return result

    def roll_up(self, at):
        """After a batch dated at: add the hours it completed to the rollups
        (pfhistory.rollup); a no-op until a batch passes the open hour's end."""
        if self._rollup_after is not None and at <= self._rollup_after:
            return
        from pfhistory import rollup

        hours, ms = rollup.timed_roll_up(self.engine)
        self.totals["rollup_hours"] += hours
        self.totals["rollup_ms"] += ms
        with self.engine.connect() as conn:
            pending = rollup.pending_hours(conn)
        self._rollup_after = pending[-1].hour + 3600 if pending else at

    def _write(self, conn, result):
        newest = queries.latest_collection(conn)
        last_at = max((at for at, _m in self.pending), default=None)
        at = int(last_at) if last_at is not None else (newest[1] if newest else 0)
        if newest is not None and at < newest[1]:
            # Collections never go back in time: a batch received while a snapshot was
            # being recorded is dated no earlier than it (its events keep their times).
            at = newest[1]
        collection_id, next_pk, next_addr = queries.next_ids(conn)
        queries.insert_collection(conn, {
            "id": collection_id, "collected_at": at, "kind": 1, "source": self.origin,
            "host": self.host, "creatorid": None, "states": 0, "inserted": 0, "updated": 0,
            "reopened": 0, "closed": 0, "packets": 0, "bytes": 0, "samples": 0,
            "duration_ms": 0, "malformed": 0})
        result.collection_id, result.collected_at = collection_id, at
        result.packets = len(self.pending) + self.pending_malformed
        batch = _Batch(conn, collection_id, at, next_pk, next_addr)
        if self._partials is None:
            self._partials = queries.count_partial_states(conn) > 0
        prev_id = newest[0] if newest else collection_id
        segment = {}
        creators = Counter()
        n_state = 0
        upd_c = pfsync.ACT_UPD_C
        for at_pkt, messages in self.pending:
            for m in messages:
                action = m.action
                if action == upd_c:
                    # The common case, inline: compressed updates of live states.
                    n_state += 1
                    key = (m.creatorid, m.id)
                    net = segment.get(key)
                    if net is None:
                        net = segment[key] = _Net(at_pkt)
                    net.last_at = at_pkt
                    if net.end_at is None:
                        net.peers_at, net.src, net.dst, net.timeout = (at_pkt, m.src, m.dst,
                                                                       m.timeout)
                        net.updates += 1
                elif action in _STATE_ACTIONS:
                    n_state += 1
                    _merge(segment, m, at_pkt)
                elif action == pfsync.ACT_CLR:
                    result.messages += 1
                    creators.update(k[0] for k in segment)
                    self._apply(conn, batch, segment, prev_id, result)
                    segment = {}
                    result.ended += queries.clear_states(
                        conn, m.creatorid, _ifname(m.ifname), collection_id, prev_id,
                        int(at_pkt))
        creators.update(k[0] for k in segment)
        self._apply(conn, batch, segment, prev_id, result)
        result.messages += n_state
        if creators:
            # Bytes moved since the previous collection, as a snapshot counts them: new
            # states' counters and what whole records added to known states' (the
            # hourly rollups sum to the collections' bytes).
            queries.finish_collection(conn, collection_id, {
                "creatorid": creators.most_common(1)[0][0],
                "packets": min(batch.new_packets + batch.moved_packets, _U63),
                "bytes": min(batch.new_bytes + batch.moved_bytes, _U63)})

    def _apply(self, conn, batch, segment, prev_id, result):
        """Apply one run of state messages (between CLRs) to the history: states some
        whole record speaks of through the collector's insertion, the others set-wise."""
        if not segment:
            return
        full, compressed = [], []
        for k, net in segment.items():
            (full if net.record is not None else compressed).append(k)
        if full:
            self._apply_full(conn, batch, segment, full, prev_id, result)
        if compressed:
            self._apply_compressed(conn, batch.c, segment, compressed, prev_id, result)

    def _apply_full(self, conn, batch, segment, full, prev_id, result):
        c = batch.c
        signed = {k: (k[0], k[1] - _U64 if k[1] > _U63 else k[1]) for k in full}
        known = queries.sync_lookup(conn, list(signed.values()))
        staged, reopen, ends = [], [], []
        cols = _native.decode(b"".join(segment[k].record for k in full))
        times = [int(segment[k].full_at) for k in full]
        created = [t - x for t, x in zip(times, cols["creation"])]
        expires = [t + x for t, x in zip(times, cols["expire"])]
        sids = _signed64(cols["id"])
        new = []
        for i, k in enumerate(full):
            net = segment[k]
            row = known.get(signed[k])
            if row is None:
                new.append(i)
                continue
            pk, first_seen, last_seen, ended_before, ended_by = row[:5]
            if ended_by is not None:
                result.stale += 1           # pfsync ended it: it stays ended
                continue
            if ended_before is not None:
                reopen.append((pk, last_seen, ended_before))
            elif _backwards(row, cols, i, net):
                result.stale += 1
                if net.end_at is not None:
                    ends.append((c if first_seen >= c else prev_id, int(net.end_at), c,
                                 int(net.end_at), pk))
                continue
            staged.append(_staged_from_record(cols, i, pk, created[i], expires[i], net))
            if net.end_at is not None:
                ends.append((c if first_seen >= c else prev_id, int(net.end_at), c,
                             int(net.end_at), pk))
        if new:
            first_pk = batch.next_pk
            batch._insert(cols, new, sids, created, expires)
            result.inserted += len(new)
            for j, i in enumerate(new):
                net = segment[full[i]]
                if net.peers_at is not None:
                    staged.append(_staged_from_record(cols, i, first_pk + j, created[i],
                                                      expires[i], net))
                if net.end_at is not None:
                    ends.append((c, int(net.end_at), c, int(net.end_at), first_pk + j))
        if self._partials:
            queries.delete_partial_states(conn, list(signed.values()))
        if reopen:
            queries.reopen_states(conn, reopen, c)
            result.reopened += len(reopen)
        if staged:
            queries.stage(conn, [r for r, _p in staged], [p for _r, p in staged], first=True)
            packets, nbytes, samples = queries.apply_staged(conn, c)
            batch.moved_packets += packets
            batch.moved_bytes += nbytes
            result.samples += samples
            result.updated += len(staged)
        if ends:
            queries.end_states(conn, ends)
            result.ended += len(ends)

    def _apply_compressed(self, conn, c, segment, keys, prev_id, result):
        """UPD_C and DEL_C of states no whole record in this run speaks of."""
        rows = []
        no_peers = (None,) * 11
        for k in keys:
            net = segment[k]
            has = net.peers_at is not None
            rows.append((k[0], k[1] - _U64 if k[1] > _U63 else k[1], int(net.first_at),
                         int(net.last_at), None if net.end_at is None else int(net.end_at),
                         net.updates, int(has), net.timeout,
                         *(net.src if has else no_peers), *(net.dst if has else no_peers)))
        queries.stage_compressed(conn, rows)
        result.stale += queries.compressed_stale(conn)
        reopen, refine = [], []
        for (pk, _first, last_seen, ended_before, ended_by, last_at, before_at, has_peers,
             end_at) in queries.compressed_closed(conn):
            if ended_by is not None:
                result.stale += 1           # pfsync ended it: it stays ended
            elif has_peers:
                reopen.append((pk, last_seen, ended_before))    # news of a live state
            elif last_at is not None and last_at <= end_at <= before_at:
                refine.append((end_at, end_at, pk))             # the window's instant
            else:
                result.stale += 1
        if reopen:
            queries.reopen_states(conn, reopen, c)
            result.reopened += len(reopen)
        partial = queries.compressed_partial(conn)
        if partial:
            self._partials = True
            result.partial += partial
        updated, samples, ended = queries.apply_compressed(conn, c, prev_id)
        result.updated += updated
        result.samples += samples
        result.ended += ended
        if refine:
            queries.refine_ends(conn, refine)
            result.ended += len(refine)


def _merge(segment, m, at):
    """Fold one state message into its state's net effect for this batch."""
    key = (m.creatorid, m.id)
    net = segment.get(key)
    if net is None:
        net = segment[key] = _Net(at)
    net.last_at = at
    if net.end_at is not None:
        return                      # nothing comes back after its removal
    if m.action in (pfsync.ACT_INS, pfsync.ACT_UPD):
        net.full_at, net.record = at, m.record
        net.peers_at = net.src = net.dst = net.timeout = None
    elif m.action == pfsync.ACT_UPD_C:
        net.peers_at, net.src, net.dst, net.timeout = at, m.src, m.dst, m.timeout
        net.updates += 1
    else:
        net.end_at = at


_PEERS = ("seqlo", "seqhi", "seqdiff", "max_win", "mss", "state", "wscale", "pfss_flags",
          "pfss_ttl", "scrub_flag", "pfss_ts_mod")


def _staged_from_record(cols, i, pk, created, expires, net):
    """Staged rows (queries.STAGED_COLUMNS, STAGED_PEER_COLUMNS) from record i, with
    later UPD_C peers."""
    def v(name):
        return cols[name][i]

    src = tuple(v(f"src_{f}") for f in _PEERS)
    dst = tuple(v(f"dst_{f}") for f in _PEERS)
    timeout, dyn = v("timeout"), v("dyn_hash")
    if net.peers_at is not None:
        src, dst, timeout, dyn = net.src, net.dst, net.timeout, 0
    # The peers are always written; their hash only when they are the record's own.
    peer_hash = v("peer_hash") if net.peers_at is None else None
    return ((pk, dyn, peer_hash, created, expires,
             *_clamped([v("packets0"), v("packets1"), v("bytes0"), v("bytes1")]),
             timeout, v("sync_flags"), v("updates"), v("state_flags")),
            (pk, *src, *dst))


def _seq_gt(a, b):
    """SEQ_GT of sys/netinet/tcp_seq.h: a after b, modulo 2**32."""
    return 0 < (a - b) % (1 << 32) < (1 << 31)


def _backwards(row, cols, i, net):
    """Whether a whole record would move a known open state's peers backwards: the
    kernel ignores such an update (queries._STALE_SQL says the rule)."""
    proto, old_src, old_src_seq, old_dst, old_dst_seq = row[7:12]
    if net.peers_at is not None:
        src, src_seq, dst, dst_seq = net.src[5], net.src[0], net.dst[5], net.dst[0]
    else:
        src, src_seq = cols["src_state"][i], cols["src_seqlo"][i]
        dst, dst_seq = cols["dst_state"][i], cols["dst_seqlo"][i]
    if proto != 6:
        return old_src > src or old_dst > dst
    return ((old_src > src and (old_src < _PF_TCPS_PROXY_SRC or src >= _PF_TCPS_PROXY_SRC))
            or _seq_gt(old_src_seq, src_seq) or old_dst > dst
            or (old_dst >= _TCPS_SYN_SENT and _seq_gt(old_dst_seq, dst_seq)))


def _ifname(raw):
    """A CLR's interface as states store it (pfctl's escaped text), or None for all."""
    if not raw:
        return None
    from pfhistory.pf import ifname_text

    return ifname_text(raw.ljust(16, b"\0"))


def check_not_older(engine, first_at, origin):
    """Refuse a capture older than the history's newest collection, before writing."""
    from datetime import datetime, timezone

    with engine.connect() as conn:
        newest = queries.latest_collection(conn)
    if newest is not None and first_at is not None and int(first_at) < newest[1]:
        def iso(t):
            return datetime.fromtimestamp(t, timezone.utc).isoformat()

        raise PFError(f"{origin}: its first packet ({iso(first_at)}) is older than the newest "
                      f"collection ({iso(newest[1])}); the history only moves forward, so "
                      f"older captures are refused (record it into a history of its own "
                      f"with --db)")


def _flush_and_roll_up(recorder, rollups=True):
    result = recorder.flush()
    if result is not None and rollups:
        recorder.roll_up(result.collected_at)


def capture_span(path):
    """(first, newest) pfsync packet times of a capture, reading it through (a file
    that is not a readable capture raises), before anything is written."""
    from pfhistory import capture

    first_at = newest_at = None
    for frame in capture.read_frames(path):
        if frame.kind in (capture.KIND_IP, capture.KIND_PFSYNC):
            first_at = frame.at if first_at is None else first_at
            newest_at = frame.at if newest_at is None else max(newest_at, frame.at)
    return first_at, newest_at


def ingest_capture(engine, path, batch_packets=DEFAULT_BATCH_PACKETS,
                   batch_ms=DEFAULT_BATCH_MS, host=None, sample_retention=None,
                   rollups=True, span=None):
    """Record a pcap/pcapng capture of pfsync traffic, batched by packet time as a
    listener would have. The file is read through once before anything is written, so a
    file that is not a readable capture (or one dated in the future, which would hold
    the history back) changes nothing; span is capture_span's answer if the caller
    already read it so. Without rollups the hours it completes are left to
    `pfhistory rollup`. Returns the SyncRecorder (its ``totals`` and ``malformed``
    counters)."""
    import os

    from pfhistory import capture

    path = os.fspath(path)
    first_at, newest_at = span if span is not None else capture_span(path)
    refuse_future(path, newest_at, "its last packet")
    check_not_older(engine, first_at, path)
    recorder = SyncRecorder(engine, os.path.abspath(path), host=host,
                            batch_packets=batch_packets, batch_ms=batch_ms)
    for frame in capture.read_frames(path):
        if frame.kind == capture.KIND_TRUNCATED:
            recorder.totals["packets"] += 1
            recorder.malformed["truncated"] += 1
            recorder.pending_malformed += 1
            continue
        if frame.kind == capture.KIND_OTHER:
            recorder.totals["other"] += 1
            continue
        if recorder.first_at is not None and frame.at - recorder.first_at >= recorder.batch_s:
            _flush_and_roll_up(recorder, rollups)
        if recorder.add(frame.at, frame.data, ip=frame.kind == capture.KIND_IP):
            _flush_and_roll_up(recorder, rollups)
        last_at = frame.at
    _flush_and_roll_up(recorder, rollups)
    if sample_retention is not None and first_at is not None:
        from pfhistory.collector import expire_samples

        with write_transaction(engine) as conn:
            expire_samples(conn, int(last_at) - sample_retention)
    return recorder
