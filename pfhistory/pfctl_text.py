"""pfctl's text for states: what OpenBSD's ``pfctl -ss [-v|-vv]`` prints.

The text is made in C (native/pfh_print.c, which follows print_state() of
sbin/pfctl/pf_print_state.c branch by branch) from the 264-byte record, the
same way pfctl makes it; this module is its one Python entry point. The
golden tests in tests/test_pfctl_golden.py were written from pfctl's source.
"""

from pfhistory import _native
from pfhistory.protocols import PROTOCOL_NAMES

__all__ = ["format_state", "format_records", "VERBOSITY_FLAGS"]

# pfctl's flags for verbosity 0, 1 and 2.
VERBOSITY_FLAGS = ("-ss", "-ss -v", "-ss -vv")

_NAMES = _native.NameTable(PROTOCOL_NAMES)


def _check(verbose):
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2 (pfctl -ss, -v, -vv), not {verbose!r}")


def format_state(state, verbose=0):
    """pfctl's lines for one state, each ending in a newline.

    verbose is 0 for ``-ss``, 1 for ``-ss -v`` and 2 for ``-ss -vv``.
    """
    _check(verbose)
    return _native.format_records(state.record, verbose, _NAMES)


def format_records(data, verbose=0):
    """pfctl's lines for a bytes-like object of whole 264-byte records."""
    _check(verbose)
    return _native.format_records(data, verbose, _NAMES)
