"""The demo stops its HTTP server (and unmounts) whatever step fails."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAILING_PULL = """
import sys
from sealtree.commands import remote_cmds
from remote.errors import RemoteError
def broken(args):
    raise RemoteError("pull broken on purpose")
remote_cmds.cmd_pull = broken
from sealtree.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _servers_of(work: str) -> list[str]:
    """Command lines of running processes that serve ``work``'s site."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and os.fsencode(f"{work}/site") in argv:
            found.append(" ".join(a.decode(errors="replace") for a in argv))
    return found


def test_the_demo_stops_its_server_when_the_pull_fails(tmp_path):
    work = str(tmp_path / "demo")
    proc = subprocess.run([sys.executable, "-c", FAILING_PULL, "demo", "--workdir", work],
                          capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert "pull broken on purpose" in proc.stderr, proc.stdout + proc.stderr
    assert proc.returncode != 0 and "# step failed" in proc.stdout
    assert "serving " in proc.stdout and "done" not in proc.stdout
    assert _servers_of(work) == []
