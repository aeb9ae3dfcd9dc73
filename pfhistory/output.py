"""States written for people and programs: pfctl text, JSON lines, CSV.

Every field goes by its py-pf name; the ends as the connections view names
them (local, nat, remote, bytes out and in) and the history fields follow.
Output is written state by state, so a million-state answer starts at once
and stays small.
"""

import csv
import json

from pfhistory.pf import PFStatePeer
from pfhistory.pfvar import PF_OUT
from pfhistory.pfctl_text import format_state
from pfhistory.timespec import format_time

__all__ = ["state_fields", "write_text", "write_json", "write_csv", "FORMATS"]

FORMATS = ("text", "json", "csv")

_SCALARS = ("id", "ifname", "rule", "anchor", "nat_rule", "creation", "expire", "creatorid",
            "af", "proto", "direction", "state_flags", "sync_flags", "log", "rt", "max_mss",
            "timeout", "updates", "min_ttl", "set_tos")
_HISTORY = ("first_seen", "last_seen", "created_at", "ended_after", "ended_before",
            "collection", "collection_at", "exact")


def _history(state):
    h = state.history
    if h is None:
        return dict.fromkeys(_HISTORY)
    return {
        "first_seen": format_time(h.first_seen),
        "last_seen": format_time(h.last_seen),
        "created_at": format_time(h.created_at),
        "ended_after": format_time(h.ended[0]) if h.ended else None,
        "ended_before": format_time(h.ended[1]) if h.ended else None,
        "collection": h.collection[0],
        "collection_at": format_time(h.collection[1]),
        "exact": h.exact,
    }


def _endpoints(state):
    """The ends of a state as the connections view names them (migrations 0002
    and 0011), so an export says who, through which NAT, to whom, without
    reading keys: local is pfctl's left-hand side (the firewall's side of the
    state's interface), nat its address on the wire, remote the other end; an
    af-to state's stack key is of the other family with its sides swapped, and
    its initiator (the wire key's [0]) is local. bytes_out is what local sent."""
    wk, sk = state.wire_key, state.stack_key    # as exported, as the view reads them
    if wk.af != sk.af:
        ends = ((wk, 0), (sk, 1), (sk, 0))
        out = 0
    else:
        ends = ((sk, 1), (wk, 1), (wk, 0))
        out = 0 if state.direction == PF_OUT else 1
    d = {}
    for name, (key, i) in zip(("local", "nat", "remote"), ends):
        d[f"{name}_addr"] = str(key.addr[i])
        d[f"{name}_port"] = int(key.port[i])
    d["translated"] = _key_tuple(wk) != _key_tuple(sk)
    d["bytes_out"], d["bytes_in"] = state.bytes[out], state.bytes[1 - out]
    return d


def _key_tuple(key):
    return (key.af, key.rdomain, *map(str, key.addr), *map(int, key.port))


def state_fields(state):
    """A state as a JSON-ready dict: py-pf names, nested like py-pf's objects."""
    d = {name: getattr(state, name) for name in _SCALARS}
    d["id"] = f"{state.id:016x}"
    d["creatorid"] = f"{state.creatorid:08x}"
    d["packets"] = list(state.packets)
    d["bytes"] = list(state.bytes)
    d["rtableid"] = list(state.rtableid)
    d["set_prio"] = list(state.set_prio)
    d["rt_addr"] = str(state.rt_addr)
    for name in ("src", "dst"):
        peer = getattr(state, name)
        d[name] = dict(zip(PFStatePeer._fields, peer))
    for name in ("nk", "sk"):
        key = getattr(state, name)
        d[name] = {"addr": [str(a) for a in key.addr], "port": [int(p) for p in key.port],
                   "rdomain": key.rdomain, "af": key.af}
    d.update(_endpoints(state))
    d.update(_history(state))
    return d


def _flat(d):
    """The nested dict as one CSV row: src_seqlo, nk_addr0, packets0, ..."""
    row = {}
    for key, value in d.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, list):
                    for i, item in enumerate(v):
                        row[f"{key}_{sub}{i}"] = item
                else:
                    row[f"{key}_{sub}"] = v
        elif isinstance(value, list):
            for i, item in enumerate(value):
                row[f"{key}{i}"] = item
        else:
            row[key] = value
    return row


def write_text(states, out, verbose=0):
    """pfctl's lines for each state, then its history on a further line."""
    for state in states:
        out.write(format_state(state, verbose))
        h = state.history
        if h is not None:
            if not h.ended:
                end = "open"
            elif h.ended[0] == h.ended[1]:      # pfsync reported the instant
                end = f"ended at {format_time(h.ended[1])}"
            else:
                end = f"ended between {format_time(h.ended[0])} and {format_time(h.ended[1])}"
            kind = "values of" if h.exact else "last observed values; samples gone for"
            out.write(f"   history: created {format_time(h.created_at)}, first seen "
                      f"{format_time(h.first_seen)}, last seen {format_time(h.last_seen)}, "
                      f"{end}; {kind} collection {h.collection[0]} at "
                      f"{format_time(h.collection[1])}\n")


def write_json(states, out):
    """One JSON object per line."""
    for state in states:
        out.write(json.dumps(state_fields(state), sort_keys=False))
        out.write("\n")


def csv_header():
    """The CSV columns, the same for every state (an empty record gives them)."""
    from pfhistory.pf import parse_states

    return list(_flat(state_fields(parse_states(bytes(264))[0])))


def write_csv(states, out):
    """A header, then one row per state."""
    writer = csv.DictWriter(out, fieldnames=csv_header(), lineterminator="\n")
    writer.writeheader()
    for state in states:
        writer.writerow(_flat(state_fields(state)))
