"""What a killed atomic write leaves (``.NAME.tmpPID``, locked while in use) is removed by the
next write of the same file and by prune; a temporary file in use never is.  prune also removes
the pack copies of killed imports (``packs/.incoming-*``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from store.atomic import atomic_write, is_temporary_name, remove_stale_temporaries
from tests.helpers import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def killed_mid_write(target: str) -> str:
    """SIGKILL a process inside ``atomic_file(target)``; return the temporary file it left."""
    code = textwrap.dedent(f"""
        import sys, time
        from store.atomic import atomic_file
        with atomic_file({target!r}) as out:
            out.write(b"half")
            out.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            env=os.environ | {"PYTHONPATH": ROOT})
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"writing\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    directory, name = os.path.split(target)
    left = os.path.join(directory, f".{name}.tmp{proc.pid}")
    assert is_temporary_name(os.path.basename(left)) and os.path.exists(left)
    return left


def writing_now(target: str) -> tuple[subprocess.Popen[bytes], str]:
    """A process inside ``atomic_file(target)``, still running; and its temporary file."""
    code = textwrap.dedent(f"""
        import sys
        from store.atomic import atomic_file
        with atomic_file({target!r}) as out:
            out.write(b"new")
            print("writing", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, env=os.environ | {"PYTHONPATH": ROOT})
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"writing\n"
    directory, name = os.path.split(target)
    return proc, os.path.join(directory, f".{name}.tmp{proc.pid}")


def test_the_next_write_of_the_same_file_removes_a_killed_writers_temporary_file(tmp_path):
    target = str(tmp_path / "state.json")
    other = str(tmp_path / "other.json")
    stale = killed_mid_write(target)
    stale_other = killed_mid_write(other)
    atomic_write(target, b"whole")
    assert not os.path.exists(stale)
    assert os.path.exists(stale_other)  # another file's: left to its own writer, or prune
    assert open(target, "rb").read() == b"whole"


def test_a_temporary_file_in_use_is_never_removed(tmp_path):
    target = str(tmp_path / "state.json")
    proc, tmp = writing_now(target)
    try:
        atomic_write(target, b"mine")
        assert remove_stale_temporaries(str(tmp_path)) == 0
        assert os.path.exists(tmp)
    finally:
        proc.communicate(b"\n")
    assert proc.returncode == 0
    assert open(target, "rb").read() == b"new"


def test_files_that_only_look_alike_are_left_alone(tmp_path):
    for name in (".state.json.tmp", "state.json.tmp123", ".state.json.tmpx", ".incoming"):
        (tmp_path / name).write_bytes(b"user data")
    os.symlink("/nonexistent", tmp_path / ".link.tmp1")
    assert remove_stale_temporaries(str(tmp_path)) == 0
    assert len(os.listdir(tmp_path)) == 5


def test_prune_removes_what_killed_writers_and_imports_left(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    run_cli("commit", "-b", "main", str(src), repo=repo.path)
    places = [os.path.join(repo.path, sub) for sub in ("deploy", "packs", "refs/heads", "remotes/origin")]
    for place in places:
        os.makedirs(place, exist_ok=True)
    stale = [killed_mid_write(os.path.join(place, "state.json")) for place in places]
    stale.append(killed_mid_write(os.path.join(repo.path, "config")))
    incoming = os.path.join(repo.path, "packs", ".incoming-abc123.pack")
    with open(incoming, "wb") as handle:
        handle.write(b"a copy of a pack")
    trash = os.path.join(repo.path, "remotes", ".trash-old-4194305")  # above pid_max: gone
    os.makedirs(os.path.join(trash, "sub"))
    dry = run_cli("prune", "--dry-run", "--json", repo=repo.path)
    assert all(os.path.exists(path) for path in [*stale, incoming, trash]), dry.stdout
    out = run_cli("prune", repo=repo.path).stdout
    assert "removed 7 leftover files" in out
    assert [path for path in [*stale, incoming, trash] if os.path.exists(path)] == []
    assert run_cli("rev-parse", "main", repo=repo.path).returncode == 0
    assert "ok" in run_cli("fsck", repo=repo.path).stdout
