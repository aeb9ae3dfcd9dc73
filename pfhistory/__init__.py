"""pfhistory: the history of OpenBSD PF's state table.

``from pfhistory import pf`` gives the py-pf compatible state API.
"""

from pfhistory._version import __version__

__all__ = ["__version__"]
