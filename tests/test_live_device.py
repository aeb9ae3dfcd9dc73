"""The live path refuses a PF device it cannot open before it makes a database.

Linux has no /dev/pf: the collector is run as on OpenBSD (its platform check
answered yes), so the real open of the device fails here as it would for a
user who is not root there, and nothing may be left behind.
"""

import subprocess
import sys

AS_ON_OPENBSD = ("import sys; import pfhistory.live as live; live.is_openbsd = lambda: True; "
                 "from pfhistory.cli import main; sys.exit(main(sys.argv[1:]))")


def test_an_unopenable_device_leaves_no_database(tmp_path):
    db = tmp_path / "new" / "history.db"
    out = subprocess.run([sys.executable, "-c", AS_ON_OPENBSD, "collect", "--db", str(db)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == ("pfhistory: /dev/pf: cannot open: No such file or directory")
    assert not (tmp_path / "new").exists()


def test_without_openbsd_the_live_path_asks_for_a_state_file(tmp_path):
    db = tmp_path / "history.db"
    out = subprocess.run([sys.executable, "-m", "pfhistory", "collect", "--db", str(db)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "needs OpenBSD" in out.stderr and "--from-file" in out.stderr
    assert "Traceback" not in out.stderr
    assert not db.exists()
