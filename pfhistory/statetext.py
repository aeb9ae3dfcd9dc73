"""`pfhistory states`: a state file printed as pfctl -ss printed it, streamed.

Chunks of records are decoded, filtered like pfctl_show_states() does (-i by
exact interface name, -R by rule number) and written as they come.
"""

from pfhistory import sources
from pfhistory.pf import states_from_columns
from pfhistory.pfctl_text import format_state

__all__ = ["write_states"]


def write_states(source, out, verbose=0, ifname=None, rule=None, chunk_records=16384):
    """Write pfctl's text for every state of source to the text stream out."""
    for columns in sources.iter_columns(source, chunk_records=chunk_records):
        states = states_from_columns(columns)
        if ifname is not None:
            states = [s for s in states if s.ifname == ifname]
        if rule is not None:
            states = [s for s in states if s.rule == rule]
        out.write("".join([format_state(s, verbose) for s in states]))
    out.flush()
