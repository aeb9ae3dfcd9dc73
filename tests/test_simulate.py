"""The firewall simulator: deterministic files, ground truth that agrees with them, and
every kind of state a real OpenBSD table holds, found in the bytes themselves."""

import ipaddress
import json
import os
import resource
import stat
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import pytest

from conftest import run_cli
from pfhistory import pf
from pfhistory.simulate import (
    MAX_STATES,
    PFTM_DEFAULT,
    SimulationConfig,
    iter_events,
    simulate,
    snapshot_path,
)

RECORD = 264
START = datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc)
CREATORID = 0x0A0B0C0D
DOC_NETS = [ipaddress.ip_network(n) for n in
            ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
LOCAL_NETS = [ipaddress.ip_network(n) for n in ("10.0.0.0/16", "fd00::/64")]
EGRESS = {"203.0.113.1", "2001:db8:1:1::1", "192.0.2.1"}
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def config(**kw):
    base = dict(states=6000, interval=60.0, duration=240.0, seed=3, start=START,
                creatorid=CREATORID, missing=(2,))
    base.update(kw)
    return SimulationConfig(**base)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """5 snapshot times a minute apart, the third missed, with ground truth."""
    out = tmp_path_factory.mktemp("sim") / "fw"
    cfg = config()
    result = simulate(cfg, out, truth=True)
    states = {}
    for when, path in result.snapshots:
        index = round((when - START).total_seconds() / cfg.interval)
        states[index] = pf.parse_states(path.read_bytes())
    truth = [json.loads(line) for line in open(result.truth_path)]
    summary = json.loads(result.summary_path.read_text())
    return cfg, out, result, states, truth, summary


@pytest.fixture(scope="module")
def first(series):
    """The states of the first snapshot."""
    return series[3][0]


@pytest.fixture(scope="module")
def everything(series):
    """Every record of every written snapshot."""
    return [s for states in series[3].values() for s in states]


def _record_peers(s):
    """(src, dst) as the record holds them: PFState orients them by direction."""
    return (s.src, s.dst) if s.direction == pf.PF_OUT else (s.dst, s.src)


def _addr(a):
    return ipaddress.ip_address(str(a))


def _in(nets, a):
    a = _addr(a)
    return any(a in n for n in nets if n.version == a.version)


# --- files ---------------------------------------------------------------------------------

def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path):
    cfg = config(states=400, duration=120.0, missing=())
    a = simulate(cfg, tmp_path / "a", truth=True)
    b = simulate(cfg, tmp_path / "b")                 # truth or not: the same files
    c = simulate(config(states=400, duration=120.0, missing=(), seed=4), tmp_path / "c")
    assert len(a.snapshots) == len(b.snapshots) == len(c.snapshots) == 3
    for (ta, pa), (tb, pb), (tc, pc) in zip(a.snapshots, b.snapshots, c.snapshots):
        assert ta == tb == tc
        assert pa.read_bytes() == pb.read_bytes()
        assert pa.read_bytes() != pc.read_bytes()
    assert b.truth_path is None


def test_fast_writer_matches_the_model_byte_for_byte(tmp_path):
    """Without truth the files come from an inlined copy of ``sample`` (with a shortcut
    for states past their last packet); with truth from ``sample`` itself. One-second
    snapshots also catch states in the middle of their TCP handshake or UDP reply."""
    cfg = config(states=30000, interval=1.0, duration=6.0, missing=(3,))
    a = simulate(cfg, tmp_path / "fast")
    b = simulate(cfg, tmp_path / "model", truth=True)
    assert [p.read_bytes() for _, p in a.snapshots] == [p.read_bytes() for _, p in b.snapshots]
    opening = sum(
        1 for _, p in a.snapshots for s in pf.parse_states(p.read_bytes())
        if s.proto == 6 and pf.TCPS_SYN_SENT in (s.src.state, s.dst.state)
        and pf.TCPS_CLOSED not in (s.src.state, s.dst.state))
    assert opening > 0


def test_files_are_named_and_dated_by_snapshot_time(series):
    cfg, out, result, *_ = series
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    times = [when for when, _ in result.snapshots]
    assert times == sorted(times)
    for when, path in result.snapshots:
        assert path == out / f"states-{when:%Y%m%dT%H%M%SZ}.pfstate"
        assert path == snapshot_path(out, when)
        st = path.stat()
        assert abs(st.st_mtime - when.timestamp()) < 1e-3
        assert st.st_size % RECORD == 0 and st.st_size > 0
        assert stat.S_IMODE(st.st_mode) == 0o600
    for name in ("truth.jsonl", "truth-summary.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name for _, p in result.snapshots] + ["truth.jsonl", "truth-summary.json"])


def test_missing_snapshots_are_not_written(series):
    cfg, out, result, states, truth, summary = series
    assert sorted(states) == [0, 1, 3, 4]
    assert not snapshot_path(out, START + timedelta(minutes=2)).exists()
    assert [s["written"] for s in summary["snapshots"]] == [True, True, False, True, True]
    assert all(2 not in row["snapshots"] for row in truth)


def test_one_snapshot_when_duration_is_zero_and_empty_files_for_no_states(tmp_path):
    one = simulate(config(states=50, duration=0.0, missing=()), tmp_path / "one")
    assert [when for when, _ in one.snapshots] == [START]
    none = simulate(config(states=0, missing=()), tmp_path / "none", truth=True)
    assert len(none.snapshots) == 5
    assert all(p.stat().st_size == 0 for _, p in none.snapshots)
    assert none.truth_path.read_text() == ""


def test_states_after_the_last_snapshot_are_in_the_truth(tmp_path):
    """A period that does not end on a snapshot: its tail is still simulated."""
    cfg = config(states=500, duration=100.0, missing=())
    result = simulate(cfg, tmp_path / "tail", truth=True)
    assert [when for when, _ in result.snapshots] == [START, START + timedelta(minutes=1)]
    rows = [json.loads(line) for line in open(result.truth_path)]
    last = (START + timedelta(minutes=1)).timestamp()
    end = (START + timedelta(seconds=100)).timestamp()
    late = [r for r in rows if r["created_ts"] > last]
    assert late and all(r["snapshots"] == [] and r["final"] is None for r in late)
    assert all(r["ended_ts"] is None or r["ended_ts"] <= end for r in rows)
    assert any(r["ended_ts"] is None for r in late)


def test_config_is_checked():
    inf = float("inf")
    for bad in (dict(states=-1), dict(states=MAX_STATES + 1), dict(interval=0.0),
                dict(interval=0.5), dict(creatorid=1 << 32), dict(start=datetime(2026, 1, 1)),
                dict(duration=inf), dict(duration=float("nan")), dict(interval=inf),
                dict(interval=inf, duration=inf), dict(duration=400 * 86400.0)):
        with pytest.raises(ValueError):
            config(**bad)


@pytest.mark.parametrize("args, what", [
    (["--start", "1970-01-01T00:00Z"], "the start 1970-01-01T00:00:00Z is too early"),
    (["--start", "2107-01-01T00:00Z"], "the start 2107-01-01T00:00:00Z is after"),
    (["--start", "2106-02-07T06:00Z", "--duration", "1h"], "ends at 2106-02-07T07:00:00Z"),
])
def test_a_start_or_end_a_state_file_cannot_hold_is_refused_before_anything(tmp_path, args,
                                                                            what):
    """The state ids hold the time pf was enabled (20-40 days before the first snapshot)
    in 32 bits: out of range it was a struct.error traceback after --out was made."""
    r = run_cli("simulate", "--out", tmp_path / "d", "--states", 10, *args)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("pfhistory: the ") and r.stderr.count("\n") == 1
    assert what in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_limits_are_exact(tmp_path):
    """40 days after 1970 and 2**32 - 1 seconds: a second outside is refused, the first
    and last seconds inside are simulated, with the enable time in the ids' high bits."""
    def run(name, start, duration):
        return run_cli("simulate", "--out", tmp_path / name, "--states", 20,
                       "--interval", "15s", "--duration", duration, "--start", start)

    assert run("early", "1970-02-09T23:59:59Z", 0).returncode == 1
    assert run("late", "2106-02-07T06:28:00Z", 16).returncode == 1
    assert list(tmp_path.iterdir()) == []
    assert run("early", "1970-02-10T00:00Z", 0).returncode == 0
    late = run("late", "2106-02-07T06:28:00Z", 15)
    assert late.returncode == 0, late.stderr
    assert late.stdout.split() == [str(tmp_path / "late" / f"states-21060207T0628{s}Z.pfstate")
                                   for s in ("00", "15")]
    ids = [s.id for s in pf.parse_states((tmp_path / "late" / "states-21060207T062815Z.pfstate")
                                         .read_bytes())]
    first = datetime(2106, 2, 7, 6, 28, tzinfo=timezone.utc).timestamp()
    assert ids and first - 40 * 86400 < (min(ids) >> 32) < first - 20 * 86400  # pf enabled


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def test_too_many_snapshots_are_refused_before_memory_grows(tmp_path):
    """55 years of one a second: the per-snapshot list it built first ran out of memory;
    beyond a year of one a minute is a typo (half a million files)."""
    r = subprocess.run([sys.executable, "-m", "pfhistory", "simulate", "--out", tmp_path / "d",
                        "--states", "10", "--duration", "20000d", "--interval", "1s"],
                       capture_output=True, text=True, preexec_fn=_limit_memory, timeout=120)
    assert r.returncode == 1, r.stderr
    assert r.stderr == ("pfhistory: 20000d00h00m of one snapshot every 1s is 1728000001 "
                        "snapshots, more than the simulator's 527041 (a year of one a "
                        "minute): take a longer interval or a shorter duration\n")
    assert list(tmp_path.iterdir()) == []


# --- ground truth --------------------------------------------------------------------------

def test_truth_lists_exactly_the_snapshots_each_state_is_in(series):
    cfg, out, result, states, truth, summary = series
    seen = defaultdict(list)
    for index in sorted(states):
        for s in states[index]:
            seen[(s.creatorid, s.id)].append(index)
    rows = {(r["creatorid"], r["id"]): r for r in truth}
    assert len(rows) == len(truth) == summary["states_total"]
    assert set(seen) <= set(rows)
    for key, row in rows.items():
        assert row["snapshots"] == seen.get(key, []), key


def test_truth_final_values_and_keys_equal_the_last_file(series):
    cfg, out, result, states, truth, summary = series
    last = {}
    for index in sorted(states):
        for s in states[index]:
            last[(s.creatorid, s.id)] = s
    checked = 0
    for row in truth:
        if not row["snapshots"]:
            assert row["final"] is None
            continue
        s = last[(row["creatorid"], row["id"])]
        src, dst = _record_peers(s)
        f = row["final"]
        assert (list(s.packets), list(s.bytes)) == (f["packets"], f["bytes"])
        assert (s.expire, s.creation, s.timeout) == (f["expire"], f["creation"], f["timeout"])
        for peer, want in ((src, f["src"]), (dst, f["dst"])):
            assert (peer.state, peer.seqlo, peer.seqhi, peer.max_win, peer.wscale) == (
                want["state"], want["seqlo"], want["seqhi"], want["max_win"], want["wscale"])
        assert (s.proto, s.record_af, s.stack_key.record_af, s.direction, s.ifname,
                s.rule, s.anchor) == (row["proto"], row["af"], row["stack_af"],
                                      row["direction"], row["ifname"], row["rule"],
                                      row["anchor"])
        for key, want in ((s.wire_key, row["wire"]), (s.stack_key, row["stack"])):
            assert [str(a) for a in key.addr] == want["addr"]
            assert [int(p) for p in key.port] == want["port"]
            assert key.rdomain == want["rdomain"]
        checked += 1
    assert checked > 5000


def test_truth_has_states_no_snapshot_saw(series):
    cfg, out, result, states, truth, summary = series
    times = [START + timedelta(seconds=i * cfg.interval) for i in range(5)]
    unseen = [r for r in truth if not r["snapshots"]]
    assert len(unseen) > 100
    for r in unseen[:500]:
        created = datetime.fromisoformat(r["created_at"].replace("Z", "+00:00"))
        assert created > START
        if r["ended_at"] is not None:
            ended = datetime.fromisoformat(r["ended_at"].replace("Z", "+00:00"))
            # born and gone between two snapshot times (or only at a missed one)
            assert not any(created <= t < ended for i, t in enumerate(times) if i != 2)


def test_truth_summary_counts_agree_with_the_files(series):
    cfg, out, result, states, truth, summary = series
    snaps = summary["snapshots"]
    assert [s["index"] for s in snaps] == [0, 1, 2, 3, 4]
    for index, recs in states.items():
        assert snaps[index]["alive"] == len(recs)
    assert abs(snaps[0]["alive"] - cfg.states) == 0
    for index in (1, 4):
        now = {s.id for s in states[index]}
        before = {s.id for s in states[index - 1]}
        assert snaps[index]["new"] == len(now - before)
        assert snaps[index]["ended"] == len(before - now)
        assert snaps[index]["born"] >= snaps[index]["new"]
        assert snaps[index]["packets"] > 0 and snaps[index]["bytes"] > 0
    # churn, but the table stays near its target size
    assert all(abs(s["alive"] - cfg.states) < 0.1 * cfg.states for s in snaps)
    assert all(s["ended"] > 0.05 * cfg.states for s in snaps[1:])
    top = summary["top_local_host_by_bytes"]
    assert top["host"] == summary["top_local_hosts_by_bytes"][0]["host"]
    assert _in(LOCAL_NETS, top["host"])
    by_host = Counter()
    for r in truth:
        if r["local_host"]:
            by_host[r["local_host"]] += r["bytes_in_run"]
    assert by_host.most_common(1)[0] == (top["host"], top["bytes"])


def test_counters_never_decrease_and_ages_follow_the_clock(series):
    cfg, out, result, states, truth, summary = series
    written = sorted(states)
    grew = 0
    for a, b in zip(written, written[1:]):
        before = {s.id: s for s in states[a]}
        dt = (b - a) * cfg.interval
        for s in states[b]:
            p = before.get(s.id)
            if p is None:
                continue
            for x, y in zip(p.packets + p.bytes, s.packets + s.bytes):
                assert y >= x
            assert abs(s.creation - p.creation - dt) <= 1
            grew += s.bytes != p.bytes
    assert grew > 1000


# --- realism, read back from the bytes ---------------------------------------------------

def _tcp_timeout(src, dst):
    """The PFTM_* index pf_tcp_track_full() gives these peer states."""
    if src >= pf.TCPS_FIN_WAIT_2 and dst >= pf.TCPS_FIN_WAIT_2:
        return {pf.PFTM_TCP_CLOSED}
    if src >= pf.TCPS_CLOSING and dst >= pf.TCPS_CLOSING:
        return {pf.PFTM_TCP_FIN_WAIT}
    if src < pf.TCPS_ESTABLISHED or dst < pf.TCPS_ESTABLISHED:
        return {pf.PFTM_TCP_OPENING, pf.PFTM_TCP_FIRST_PACKET}
    if src >= pf.TCPS_CLOSING or dst >= pf.TCPS_CLOSING:
        return {pf.PFTM_TCP_CLOSING}
    return {pf.PFTM_TCP_ESTABLISHED}


def test_tcp_progresses_like_pf(everything):
    pairs = Counter()
    for s in everything:
        if s.proto != 6:
            continue
        src, dst = _record_peers(s)
        pairs[src.state, dst.state] += 1
        assert s.timeout in _tcp_timeout(src.state, dst.state), (src.state, dst.state)
        if (src.state, dst.state) == (pf.TCPS_SYN_SENT, pf.TCPS_CLOSED):
            assert (dst.seqlo, dst.seqhi, dst.max_win) == (0, 1, 1)   # pf_create_state
            assert s.packets[1] == 0
        assert src.max_win > 0 and dst.max_win > 0
    for pair in ((pf.TCPS_SYN_SENT, pf.TCPS_CLOSED),
                 (pf.TCPS_ESTABLISHED, pf.TCPS_ESTABLISHED),
                 (pf.TCPS_FIN_WAIT_2, pf.TCPS_FIN_WAIT_2),
                 (pf.TCPS_TIME_WAIT, pf.TCPS_TIME_WAIT)):
        assert pairs[pair] > 0, pair
    assert pairs[pf.TCPS_FIN_WAIT_2, pf.TCPS_ESTABLISHED] + \
        pairs[pf.TCPS_ESTABLISHED, pf.TCPS_FIN_WAIT_2] > 0          # half-closed
    assert pairs[pf.TCPS_ESTABLISHED, pf.TCPS_ESTABLISHED] > sum(pairs.values()) / 3


def test_tcp_windows_sequence_numbers_and_mss(series, first):
    tcp = [s for s in first if s.proto == 6]
    flag = pf.PF_WSCALE_FLAG
    both = [s for s in tcp if s.src.wscale & flag and s.dst.wscale & flag]
    assert len(both) > 0.7 * len(tcp)
    assert any(s.src.wscale == 0 and s.dst.wscale == 0 for s in tcp)
    est = [s for s in tcp if s.src.state == s.dst.state == pf.TCPS_ESTABLISHED]
    assert any((s.src.seqhi - s.src.seqlo) % 2**32 > 1 for s in est)
    assert any(s.src.mss and s.dst.mss for s in tcp)
    assert any(s.src.seqdiff or s.dst.seqdiff for s in tcp)
    assert any(s.max_mss == 1440 for s in tcp)
    assert any(s.src.scrub_flag == pf.PFSYNC_SCRUB_FLAG_VALID for s in tcp)
    # sequence numbers move with the traffic between snapshots
    later = {s.id: s for s in series[3][1]}
    moved = [s for s in est if s.id in later and _record_peers(later[s.id])[0].seqlo
             != _record_peers(s)[0].seqlo]
    assert len(moved) > 100


def test_udp_icmp_and_other_protocols(everything):
    by_proto = defaultdict(list)
    for s in everything:
        by_proto[s.proto].append(s)
    assert {6, 17, 1, 58, 47, 50} <= set(by_proto)
    udp = Counter(tuple(p.state for p in _record_peers(s)) for s in by_proto[17])
    assert udp[pf.PFUDPS_MULTIPLE, pf.PFUDPS_MULTIPLE] and \
        udp[pf.PFUDPS_MULTIPLE, pf.PFUDPS_SINGLE] and udp[pf.PFUDPS_SINGLE, pf.PFUDPS_NO_TRAFFIC]
    for s in by_proto[17]:
        src, dst = _record_peers(s)
        want = {(2, 2): {pf.PFTM_UDP_MULTIPLE}, (2, 1): {pf.PFTM_UDP_SINGLE},
                (1, 0): {pf.PFTM_UDP_FIRST_PACKET, pf.PFTM_UDP_SINGLE}}[src.state, dst.state]
        assert s.timeout in want
    for proto, echo in ((1, 8), (58, 128)):
        for s in by_proto[proto]:
            assert s.timeout in (pf.PFTM_ICMP_FIRST_PACKET, pf.PFTM_ICMP_ERROR_REPLY)
            # the echo id sits in the initiator's port, the type in the other
            init = 1 if s.direction == pf.PF_OUT else 0
            ports = [int(p) for p in s.wire_key.port]
            assert ports[1 - init] == echo and ports[init] != 0
    assert all(s.record_af == 2 for s in by_proto[1])
    assert all(s.record_af == 24 for s in by_proto[58])
    for proto in (47, 50):
        for s in by_proto[proto]:
            assert [int(p) for p in s.wire_key.port] == [0, 0]
            assert s.timeout in (pf.PFTM_OTHER_FIRST_PACKET, pf.PFTM_OTHER_SINGLE,
                                 pf.PFTM_OTHER_MULTIPLE)
            assert {p.state for p in (s.src, s.dst)} <= {0, 1, 2}


def test_expire_and_creation(series, everything):
    cfg = series[0]
    for s in everything:
        assert 0 <= s.expire <= PFTM_DEFAULT[s.timeout]
    assert any(s.expire == 0 for s in everything)                  # awaiting the purge
    assert any(s.creation > cfg.duration for s in everything)       # older than the run
    assert max(s.creation for s in everything) > 3 * 86400          # open for days


def test_addresses_translation_and_routing(first):
    afs = Counter(s.record_af for s in first)
    assert set(afs) == {2, 24} and afs[24] > 0.1 * len(first)
    nat = [s for s in first if s.direction == pf.PF_OUT and s.wire_key != s.stack_key]
    assert nat
    for s in nat:
        assert _in(LOCAL_NETS, s.stack_key.addr[1]) and str(s.wire_key.addr[1]) in EGRESS
        if s.proto in (6, 17):
            assert 50001 <= int(s.wire_key.port[1]) <= 65535
    rdr = [s for s in first if s.direction == pf.PF_IN and s.wire_key.record_af ==
           s.stack_key.record_af and s.wire_key.addr[1] != s.stack_key.addr[1]]
    assert rdr
    for s in rdr:
        assert str(s.wire_key.addr[1]) in EGRESS and _in(LOCAL_NETS, s.stack_key.addr[1])
    afto = [s for s in first if s.wire_key.record_af != s.stack_key.record_af]
    assert afto
    for s in afto:
        assert s.direction == pf.PF_IN and s.record_af == 24 and s.stack_key.record_af == 2
        assert _addr(s.wire_key.addr[1]) in NAT64
    assert any(s.wire_key.rdomain for s in first)
    assert any(s.wire_key.rdomain != s.stack_key.rdomain for s in first)
    for s in first:
        assert s.rtableid[0 if s.direction == pf.PF_IN else 1] == -1
    assert any(s.rtableid == (-1, 1) for s in first)
    routed = [s for s in first if s.rt == pf.PF_ROUTETO]
    assert routed and all(not s.rt_addr.is_zero() for s in routed)
    assert any(s.rt == pf.PF_REPLYTO for s in first)


def test_interfaces_rules_and_flags(first):
    assert {"em0", "em1", "vlan10", "pppoe0", "all"} <= {s.ifname for s in first}
    assert len({s.rule for s in first}) >= 10
    anchors = {s.anchor for s in first}
    assert pf.PF_RULE_NONE in anchors and len(anchors) >= 3
    assert any(s.log & pf.PF_LOG_ALL for s in first)
    assert any(s.sync_flags & pf.PFSYNC_FLAG_SRCNODE for s in first)
    assert any(s.state_flags & pf.PFSTATE_SLOPPY for s in first)
    assert any(s.state_flags & pf.PFSTATE_PFLOW for s in first)
    assert {s.creatorid for s in first} == {CREATORID}
    assert all(s.nat_rule == pf.PF_RULE_NONE for s in first)


def test_ids_are_unique_and_count_up_in_table_order(series):
    for recs in series[3].values():
        ids = [s.id for s in recs]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
    truth = series[4]
    assert len({r["id"] for r in truth}) == len(truth)


def test_counters_are_heavy_tailed_64_bit(everything):
    total = sorted(s.bytes[0] + s.bytes[1] for s in everything)
    assert any(max(s.bytes) > 2**32 for s in everything)
    assert any(max(s.packets) > 2**20 for s in everything)
    # a few elephants carry most of the bytes
    assert sum(total[-len(total) // 100:]) > 0.5 * sum(total)


def test_hosts_come_from_the_expected_ranges_with_skewed_popularity(first):
    remote, local = [], Counter()
    for s in first:
        k = s.stack_key
        for a in k.addr:
            if _in(LOCAL_NETS, a):
                local[str(a)] += 1
            elif str(a) not in EGRESS and _addr(a) not in NAT64:
                remote.append(a)
    assert any(_addr(a).version == 4 for a in local) and any(
        _addr(a).version == 6 for a in local)
    doc = sum(_in(DOC_NETS, a) for a in remote)
    assert 0.05 * len(remote) < doc < 0.8 * len(remote)
    assert len(set(map(str, remote))) > 1000
    counts = sorted(local.values(), reverse=True)
    assert counts[0] > 10 * counts[len(counts) // 2]


# --- the event model -------------------------------------------------------------------

def test_events_come_from_the_same_model_as_the_files(tmp_path):
    cfg = config(states=300, duration=120.0, missing=())
    result = simulate(cfg, tmp_path / "ev", truth=True)
    truth = {r["id"]: r for r in map(json.loads, open(result.truth_path))}
    files = {when.timestamp(): path.read_bytes() for when, path in result.snapshots}
    inserted, deleted, alive = set(), {}, {}
    last = None
    for t, kind, state in iter_events(cfg):
        if last is not None and t >= START.timestamp():
            assert t >= last
        last = t
        if kind == "insert":
            assert state.id not in inserted
            inserted.add(state.id)
            alive[state.id] = state
        elif kind == "delete":
            deleted[state.id] = t
            alive.pop(state.id)
        else:
            assert state.id in alive and state.created_at < t < state.ended_at
    assert inserted == set(truth)
    for sid, t in deleted.items():
        assert truth[sid]["ended_ts"] == pytest.approx(t, abs=1e-6)
    assert all(truth[sid]["ended_at"] is None for sid in alive)
    # the state objects rebuild the snapshot records exactly
    for ts, data in files.items():
        states = sorted((s for s in _alive_at(cfg, ts)), key=lambda s: s.id)
        assert b"".join(s.record_at(ts) for s in states) == data


def _alive_at(cfg, ts):
    alive = {}
    for t, kind, state in iter_events(cfg):
        if t > ts:
            break
        if kind == "insert":
            alive[state.id] = state
        elif kind == "delete":
            alive.pop(state.id)
    return alive.values()
