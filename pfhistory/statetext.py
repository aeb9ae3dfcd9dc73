"""`pfhistory states`: a state file printed as pfctl -ss printed it, streamed.

Chunks of records go straight from the file to pfctl's text (made in C);
-i and -R select records the way pfctl_show_states() does: the exact
interface name, and the rule number.
"""

from pfhistory import pf, sources
from pfhistory.pfctl_text import format_records

__all__ = ["write_states"]


def _selected(columns, ifname, rule):
    """The records of a chunk that pass pfctl's -i and -R filters, as bytes."""
    keep = [True] * columns.n
    if ifname is not None:
        # Compare the text pfctl would print, so escaped names match too.
        names = [pf.ifname_text(raw) for _kind, _af, raw in columns["uniq"]]
        refs = columns["ifname_ref"]
        keep = [k and names[r] == ifname for k, r in zip(keep, refs)]
    if rule is not None:
        keep = [k and r == rule for k, r in zip(keep, columns["rule"])]
    return b"".join([rec for rec, k in zip(columns["record"], keep) if k])


def write_states(source, out, verbose=0, ifname=None, rule=None, chunk_records=16384):
    """Write pfctl's text for every state of source to the text stream out."""
    for columns in sources.iter_columns(source, chunk_records=chunk_records):
        data = columns.data if ifname is None and rule is None else _selected(
            columns, ifname, rule)
        out.write(format_records(data, verbose))
    out.flush()
