"""The collector: record one snapshot of the state table as one collection.

Each snapshot becomes one transaction: new states are inserted with their two
keys and two peers; states whose values changed get their previous values
moved to ``samples`` and the new ones written; open states the snapshot lacks
are closed (the window between the last collection that saw them and this
one); closed states that come back are reopened, their absence kept as a
sample. Recording the same snapshot twice changes nothing but the
collection log. A snapshot older than the newest collection is refused: the
history only moves forward.
"""

import socket
import time
from collections import Counter
from itertools import repeat
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from pfhistory import queries, sources
from pfhistory.addresses import ntop
from pfhistory.db import write_transaction
from pfhistory.exceptions import PFError
from pfhistory.models import PEER_FIELDS
from pfhistory.pfvar import OPENBSD_AF_INET, PF_RULE_NONE

__all__ = ["CollectionResult", "Snapshot", "record_snapshot", "DEFAULT_SAMPLE_RETENTION",
           "expire_samples"]

DEFAULT_SAMPLE_RETENTION = 24 * 3600
_U63 = (1 << 63) - 1
_U64 = 1 << 64
# Samples deleted per statement while expiring, so the write lock is short.
_EXPIRE_BATCH = 20000


class OlderSnapshotError(PFError):
    """A snapshot older than the newest collection recorded."""


@dataclass
class Snapshot:
    """What to record: where the records come from and when they were taken."""

    source: object          # a state file path, or None for the live /dev/pf
    collected_at: int       # epoch seconds, UTC
    origin: str             # shown in the collections table


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
        self.open = {(cid, sid): (pk, dyn, cat, eat)
                     for cid, sid, pk, dyn, cat, eat in queries.open_states(conn)}
        self.ended_by_pfsync = 0
        self.states = self.inserted = self.updated = self.reopened = 0
        self.new_packets = self.new_bytes = 0
        self.creatorids = Counter()
        self.staged_any = False

    # -- per chunk ---------------------------------------------------------------

    def add_chunk(self, c):
        n = c.n
        if n == 0:
            return
        self.states += n
        t = self.t
        cids = c["creatorid"]
        sids = _signed64(c["id"])
        dyns = c["dyn_hash"]
        created = [t - x for x in c["creation"]]
        expires = [t + x for x in c["expire"]]
        self.creatorids.update(cids)
        pop = self.open.pop
        changed, unknown = [], []
        for i, key in enumerate(zip(cids, sids)):
            rec = pop(key, None)
            if rec is None:
                unknown.append(i)
            elif rec[1] != dyns[i] or rec[2] != created[i] or rec[3] != expires[i]:
                changed.append((i, rec[0]))
        # States absent from this chunk's lookup may be closed ones coming back.
        back = queries.closed_states_by_key(
            self.conn, [(cids[i], sids[i]) for i in unknown]) if unknown else {}
        new = []
        reopen = []
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
                changed.append((i, pk))
        if reopen:
            queries.reopen_states(self.conn, [(pk, ls, None) for pk, ls, _ in reopen], self.c)
            self.reopened += len(reopen)
        if new:
            self._insert(c, new, sids, created, expires)
        if changed:
            self._stage(c, changed, created, expires)
            self.updated += len(changed) - len(reopen)

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
        missing = [p for p in set(pairs.values()) if p not in self.addr_ids]
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
            return values if everything else [values[i] for i in new]

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
        cids = repeat(cid, n)
        nulls = repeat(None, n)
        queries.insert_states(self.conn, list(zip(
            pks, col("creatorid"), pick(sids), [names[r] for r in col("ifname_ref")],
            col("rule"), col("anchor"), col("nat_rule"), col("proto"), col("direction"),
            col("af"), col("log"), rt, rt_addr, col("rtableid0"), col("rtableid1"),
            col("max_mss"), col("min_ttl"), col("set_tos"), col("set_prio0"), col("set_prio1"),
            pick(created), pick(expires), packets0, packets1, bytes0, bytes1, col("timeout"),
            col("sync_flags"), col("updates"), col("state_flags"), col("dyn_hash"), cids,
            repeat(cid, n), nulls, repeat(None, n), repeat(None, n), repeat(None, n),
            repeat(None, n))))
        keys = {}
        for side in ("wire", "stack"):
            keys[side] = list(zip(
                col(side + "_af"), [ids[r] for r in col(side + "_addr0_ref")],
                col(side + "_port0"), [ids[r] for r in col(side + "_addr1_ref")],
                col(side + "_port1"), col(side + "_rdomain")))
        mirror = [int(w == s) for w, s in zip(keys["wire"], keys["stack"])]
        key_rows = [(pk, 0, *k, m) for pk, k, m in zip(pks, keys["wire"], mirror)]
        key_rows += [(pk, 1, *k, 0) for pk, k in zip(pks, keys["stack"])]
        key_rows.sort()
        queries.insert_keys(self.conn, key_rows)
        peer_rows = []
        for side_no, side in enumerate(("src", "dst")):
            peer_rows.extend(zip(pks, repeat(side_no, n),
                                 *(col(f"{side}_{f}") for f in PEER_FIELDS)))
        peer_rows.sort()
        queries.insert_peers(self.conn, peer_rows)
        self.new_packets += sum(packets0) + sum(packets1)
        self.new_bytes += sum(bytes0) + sum(bytes1)
        self.inserted += n

    def _stage(self, c, changed, created, expires):
        col = c.__getitem__
        fields = [col("dyn_hash"), created, expires,
                  _clamped(col("packets0")), _clamped(col("packets1")),
                  _clamped(col("bytes0")), _clamped(col("bytes1")),
                  col("timeout"), col("sync_flags"), col("updates"), col("state_flags"),
                  *(col(f"src_{f}") for f in PEER_FIELDS),
                  *(col(f"dst_{f}") for f in PEER_FIELDS)]
        index = [i for i, _pk in changed]
        rows = list(zip([pk for _i, pk in changed], *([f[i] for i in index] for f in fields)))
        queries.stage(self.conn, rows, first=not self.staged_any)
        self.staged_any = True

    # -- at the end --------------------------------------------------------------

    def finish(self):
        moved_packets = moved_bytes = samples = 0
        if self.staged_any:
            moved_packets, moved_bytes, samples = queries.apply_staged(self.conn, self.c)
        # Open states the snapshot lacks are closed, except those created after it was
        # taken (pfsync reported them meanwhile): they cannot be in it.
        closed = [rec for rec in self.open.values() if rec[2] <= self.t]
        if closed:
            prev_id, prev_at = self.prev if self.prev is not None else (0, 0)
            queries.close_states(self.conn, [rec[0] for rec in closed],
                                 prev_id, prev_at, self.c, self.t)
        return {
            "states": self.states, "inserted": self.inserted, "updated": self.updated,
            "reopened": self.reopened, "closed": len(closed),
            "packets": min(self.new_packets + moved_packets, _U63),
            "bytes": min(self.new_bytes + moved_bytes, _U63),
            "samples": samples,
            "creatorid": self.creatorids.most_common(1)[0][0] if self.creatorids else None,
        }


def _ifnames(c):
    from pfhistory.pf import ifname_text

    return {ref: ifname_text(raw) for ref, (_kind, _af, raw) in enumerate(c["uniq"])
            if _kind == 1}


def record_snapshot(engine, snapshot, host=None, sample_retention=DEFAULT_SAMPLE_RETENTION,
                    chunk_records=16384):
    """Record one snapshot as one collection, all or nothing."""
    started = time.monotonic()
    host = host or socket.gethostname()
    with write_transaction(engine) as conn:
        newest = queries.latest_collection(conn, kind=0)
        if newest is not None and snapshot.collected_at < newest[1]:
            raise OlderSnapshotError(
                f"{snapshot.origin}: taken at {_iso(snapshot.collected_at)}, before the newest "
                f"collection ({_iso(newest[1])}); the history only moves forward, so "
                f"older snapshots are refused")
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
        try:
            for columns in sources.iter_columns(snapshot.source, chunk_records=chunk_records):
                recorder.add_chunk(columns)
            summary = recorder.finish()
        except IntegrityError:
            raise PFError(f"{snapshot.origin}: holds two records of one state (same creatorid "
                          f"and id); not a consistent state table, nothing recorded") from None
        expire_samples(conn, snapshot.collected_at - sample_retention)
        summary["duration_ms"] = int((time.monotonic() - started) * 1000)
        queries.finish_collection(conn, collection_id, summary)
    summary.pop("creatorid")
    return CollectionResult(collection_id=collection_id,
                            collected_at=snapshot.collected_at, **summary)


def expire_samples(conn, before_at, max_batches=50):
    """Drop samples only collections before before_at needed, in batches."""
    first_kept = queries.collection_before(conn, before_at)
    if first_kept is None:
        return 0
    deleted = 0
    for _ in range(max_batches):
        n = queries.expire_samples(conn, first_kept, _EXPIRE_BATCH)
        deleted += n
        if n < _EXPIRE_BATCH:
            break
    return deleted


def _iso(epoch):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()
