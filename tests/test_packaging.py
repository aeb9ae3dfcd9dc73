"""The wheel contains what runs: the compiled decoder and every module."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tracked_copy(dest):
    """A copy of the files git tracks (or would), without build leftovers."""
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "*.so",
                                    "__pycache__", "demo", "out", ".pytest_cache",
                                    ".hypothesis", "_pfh.c")
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


def test_wheel_builds_and_contains_the_native_module(tmp_path):
    src = _tracked_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(wheels), str(src)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    wheel, = wheels.glob("pfhistory-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("pfhistory/_pfh") and n.endswith(".so") for n in names)
    for module in ("pf", "pfvar", "cli", "simulate", "records", "statefile", "protocols"):
        assert f"pfhistory/{module}.py" in names, module
    assert any(n.endswith("entry_points.txt") for n in names)

    # The unpacked wheel imports and decodes without the source tree.
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    check = subprocess.run(
        [sys.executable, "-c", "import pfhistory.pf as pf, pfhistory; "
         "print(pfhistory.__file__); print(pf.parse_states(bytes(264))[0].ifname == '')"],
        capture_output=True, text=True, cwd=tmp_path,
        env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"})
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines() == [str(unpacked / "pfhistory" / "__init__.py"), "True"]
