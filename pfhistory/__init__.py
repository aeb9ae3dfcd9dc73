"""pfhistory: the history of OpenBSD PF's state table.

``from pfhistory import pf`` gives the py-pf compatible state API;
``from pfhistory import History`` the read-only history (imported on first
use, so decoding alone never loads SQLAlchemy).
"""

from pfhistory._version import __version__

__all__ = ["__version__", "History"]


def __getattr__(name):
    if name == "History":
        from pfhistory.history import History

        return History
    raise AttributeError(f"module 'pfhistory' has no attribute {name!r}")
