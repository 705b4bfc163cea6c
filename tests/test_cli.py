"""The CLI as a user meets it: outputs, --json, errors with paths and exit codes, no tracebacks."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from sealtree import commands
from sealtree.cli import command_word
from tests.helpers import run_cli


@pytest.fixture
def history(tmp_path, repo):
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "motd").write_text("hello\n")
    (src / "with space").write_text("s")
    os.symlink("etc/motd", src / "link")
    first = run_cli("commit", "-b", "os/main", "-s", "first", "--version", "1", "--timestamp", "100",
                    str(src), repo=repo.path).stdout.strip()
    (src / "etc" / "motd").write_text("changed\n")
    os.chmod(src / "with space", 0o600)
    (src / "new").write_text("n")
    os.unlink(src / "link")
    second = run_cli("commit", "-b", "os/main", "-s", "second", "--version", "2", "--timestamp", "200",
                     "--metadata", "build=7", str(src), repo=repo.path).stdout.strip()
    return repo, first, second


def test_refs_rev_parse_log_show(history):
    repo, first, second = history
    assert run_cli("rev-parse", "os/main", repo=repo.path).stdout.strip() == second
    assert run_cli("rev-parse", "os/main^", repo=repo.path).stdout.strip() == first
    assert run_cli("rev-parse", second[:8], repo=repo.path).stdout.strip() == second
    assert json.loads(run_cli("refs", "--json", repo=repo.path).stdout) == {"os/main": second}
    log = json.loads(run_cli("log", "--json", "os/main", repo=repo.path).stdout)
    assert [c["id"] for c in log] == [second, first]
    assert log[0]["parent"] == first and log[0]["metadata"] == {"build": "7"}
    text = run_cli("log", "os/main", repo=repo.path).stdout
    assert "second" in text and "first" in text and "Version: 2" in text
    shown = json.loads(run_cli("show", "--json", "os/main", repo=repo.path).stdout)
    assert shown["version"] == "2" and shown["timestamp"] == 200


def test_ls_cat_diff(history):
    repo, first, second = history
    listing = json.loads(run_cli("ls", "-R", "--json", "os/main", repo=repo.path).stdout)
    by_path = {e["path"]: e for e in listing}
    assert by_path["/etc/motd"]["size"] == 8 and by_path["/etc/motd"]["digest"].startswith("sha256:")
    assert by_path["/with space"]["mode"] == 0o600
    text = run_cli("ls", first, "/", repo=repo.path).stdout
    assert "/link -> etc/motd" in text and text.splitlines()[0].startswith("d00755")
    assert run_cli("cat", "os/main", "/etc/motd", repo=repo.path).stdout == "changed\n"
    changes = json.loads(run_cli("diff", "--json", first, second, repo=repo.path).stdout)
    assert {(c["status"], c["path"]) for c in changes} == {
        ("M", "/etc/motd"), ("M", "/with space"), ("A", "/new"), ("D", "/link")}
    verbose = run_cli("diff", "-v", first, second, repo=repo.path).stdout
    assert "M    /with space  (mode)" in verbose and "M    /etc/motd  (content)" in verbose


@pytest.mark.parametrize("args,code,words", [
    (["log", "nope"], 4, "nope: no such ref"),
    (["cat", "os/main", "/missing"], 5, "missing"),
    (["cat", "os/main", "/etc"], 8, "is a dir"),
    (["checkout", "os/main", "/nonexistent-dir/x"], 8, "/nonexistent-dir"),
    (["commit", "-b", "main", "/does/not/exist"], 8, "/does/not/exist"),
    (["commit", "-b", "a..b", "/tmp"], 4, "invalid ref name"),
    (["rev-parse", "0000"], 4, "0000"),
])
def test_errors_name_the_thing_and_exit_per_class(history, args, code, words):
    repo = history[0]
    proc = run_cli(*args, repo=repo.path, check=False)
    assert proc.returncode == code, proc.stderr
    assert words in proc.stderr and proc.stderr.startswith("sealtree: error:")


def test_not_a_repository(tmp_path):
    proc = run_cli("refs", repo=str(tmp_path), check=False)
    assert proc.returncode == 3 and "not a sealtree repository" in proc.stderr
    proc = run_cli("refs", check=False, env={"SEALTREE_REPO": ""})
    assert proc.returncode == 2 and "--repo" in proc.stderr


def test_checkout_hardlinks_and_copy(history, tmp_path):
    repo = history[0]
    run_cli("checkout", "os/main", str(tmp_path / "hl"), repo=repo.path)
    run_cli("checkout", "--copy", "os/main", str(tmp_path / "cp"), repo=repo.path)
    assert os.stat(tmp_path / "hl" / "etc" / "motd").st_nlink > 1
    assert os.stat(tmp_path / "cp" / "etc" / "motd").st_nlink == 1
    proc = run_cli("checkout", "os/main", str(tmp_path / "hl"), repo=repo.path, check=False)
    assert proc.returncode == 8 and "already exists" in proc.stderr


def test_prune_keeps_history_and_drops_the_unreachable(history, tmp_path):
    repo = history[0]
    src = tmp_path / "other"
    src.mkdir()
    (src / "only-here").write_bytes(b"unique content")
    run_cli("commit", "-b", "tmp", str(src), repo=repo.path)
    report = json.loads(run_cli("prune", "--json", repo=repo.path).stdout)
    assert report["removed"] == 0
    os.unlink(os.path.join(repo.path, "refs", "heads", "tmp"))
    report = json.loads(run_cli("prune", "--json", repo=repo.path).stdout)
    assert report["removed"] == 3  # its commit, root tree and file
    assert "ok" in run_cli("fsck", repo=repo.path).stdout


def test_help_is_complete():
    top = run_cli("--help").stdout
    for command in ("init", "commit", "log", "ls", "diff", "checkout", "fsck", "prune", "digest"):
        assert command in top
        sub = run_cli(command, "--help").stdout
        assert "usage: sealtree" in sub and len(sub.splitlines()) > 4


def _registered(modules) -> dict[str, str]:
    """Each command's --help text, as registered by ``modules``."""
    parser = argparse.ArgumentParser(prog="sealtree")
    sub = parser.add_subparsers()
    for module in modules:
        module.register(sub)
    return {name: p.format_help() for name, p in sub.choices.items()}


def test_command_table_matches_what_the_modules_register():
    everything = _registered(commands.command_modules())
    assert set(commands.COMMANDS) == set(everything)
    for command in commands.COMMANDS:  # its own modules alone give the same parser
        assert _registered(commands.command_modules(command))[command] == everything[command], command


@pytest.mark.parametrize("argv, word", [
    (["deploy", "x"], "deploy"), (["--repo", "deploy", "ls", "r"], "ls"), (["--repo=r", "log", "x"], "log"),
    (["--help", "deploy"], None), ([], None), (["--repo", "r"], None)])
def test_command_word(argv, word):
    assert command_word(argv) == word


def test_demo_runs_the_main_job(tmp_path, needs_root):
    out = run_cli("demo", "--workdir", str(tmp_path / "demo")).stdout
    for step in ("commit", "checkout", "fsck", "pack sign", "pack verify", "deploy", "mount", "umount"):
        assert step in out, step
    assert "checked 21 objects" in out and ": ok" in out
    assert "mounted " in out and "unmounted " in out
    with open("/proc/self/mountinfo") as handle:
        assert str(tmp_path) not in handle.read()
