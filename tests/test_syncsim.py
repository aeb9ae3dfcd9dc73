"""The simulator's pfsync emitter: every change of the model goes out once, in time order,
in valid packets no bigger than the MTU, and the records are the model's."""

from collections import Counter
from datetime import datetime, timezone

from pfhistory import _native, pfsync, syncsim
from pfhistory.simulate import SimulationConfig, iter_events

CFG = SimulationConfig(states=300, duration=600.0, seed=4,
                       start=datetime(2026, 11, 24, 22, 0, tzinfo=timezone.utc))


def test_every_event_is_sent_once_in_order():
    start = CFG.start.timestamp()
    events = list(iter_events(CFG))
    initial = [s.id for t, k, s in events if k == "insert" and t <= start]
    later = Counter(k for t, k, s in events if not (k == "insert" and t <= start))
    got = Counter()
    order = []
    times = []
    for at, dgram in syncsim.iter_datagrams(CFG):
        assert len(dgram) <= syncsim.DEFAULT_MTU
        times.append(at)
        _src, packet = pfsync.decode_ip(dgram)
        for m in packet.messages:
            got[pfsync.ACTION_NAMES[m.action]] += 1
            order.append((m.action, m.id))
    assert times == sorted(times) and times[0] == start
    assert got["UPD"] == len(initial) and got["BUS"] == 2
    assert got["INS"] == later["insert"]
    assert got["UPD_C"] == later["update"]
    assert got["DEL_C"] == later["delete"]
    # The bulk is bracketed by BUS START and END and comes first.
    assert order[0][0] == pfsync.ACT_BUS and order[len(initial) + 1][0] == pfsync.ACT_BUS
    # An INS precedes every other message of its state, and a DEL_C ends it.
    seen = {}
    for action, sid in order:
        if action == pfsync.ACT_INS:
            assert sid not in seen
        if action in (pfsync.ACT_UPD_C, pfsync.ACT_DEL_C):
            assert seen.get(sid) in (pfsync.ACT_INS, pfsync.ACT_UPD, pfsync.ACT_UPD_C)
        if action != pfsync.ACT_BUS:
            seen[sid] = action


def test_records_are_the_models_and_packets_wait_at_most_a_second():
    start = CFG.start.timestamp()
    events = {(s.id, k): (t, s) for t, k, s in iter_events(CFG)
              if k == "insert" and t > start}
    checked = 0
    for at, dgram in syncsim.iter_datagrams(CFG):
        for m in pfsync.decode_ip(dgram)[1].messages:
            if m.action == pfsync.ACT_INS:
                t, s = events[(m.id, "insert")]
                assert t <= at <= t + syncsim.SEND_DELAY + 1e-6
                assert m.record == s.record_at(t)
                checked += 1
    assert checked > 50
    cols = _native.decode(s.record_at(t))
    assert cols["creatorid"] == [CFG.creatorid]
