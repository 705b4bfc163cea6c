"""The CLI as a user meets it: outputs, --json, errors with paths and exit codes, no tracebacks."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import pytest

from sealtree import commands
from sealtree.cli import command_word
from tests.helpers import ROOT, run_cli


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
    (["cat", "os/main", "/missing"], 1, "/missing: no such path"),
    (["cat", "os/main", "/etc"], 1, "/etc: is a directory"),
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


def test_the_installed_entry_point_starts_and_fails_cleanly(history):
    """``python -m sealtree`` in a process of its own (the other tests run ``main`` in-process)."""
    assert "usage: sealtree" in run_cli("--help", in_process=False).stdout
    proc = run_cli("log", "nope", repo=history[0].path, check=False, in_process=False)
    assert proc.returncode == 4 and proc.stderr == "sealtree: error: nope: no such ref\n"


def test_a_command_imports_only_its_own_module(repo):
    """Start-up counts on every deploy and boot: ``refs`` loads neither the other commands'
    modules nor the overlay layer."""
    code = ("import sys; from sealtree.cli import main; main(sys.argv[1:]); "
            "print(*sorted(m for m in sys.modules if m.startswith(('sealtree.commands.', 'overlay'))))")
    proc = subprocess.run([sys.executable, "-c", code, "--repo", repo.path, "refs"], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["sealtree.commands.common", "sealtree.commands.repo_cmds"]


def test_demo_runs_the_main_job(tmp_path, needs_root):
    out = run_cli("demo", "--workdir", str(tmp_path / "demo")).stdout
    for step in ("commit", "checkout", "fsck", "pack sign", "pack verify", "publish", "serve",
                 "remote add", "pull vendor", "deploy", "mount", "umount"):
        assert step in out, step
    # the vendor's repository, and the device's with the image its pull built from the pack
    assert out.count("checked 21 objects") == 1 and out.count("checked 22 objects") == 1 and ": ok" in out
    assert "serving " in out and "server stopped" in out
    assert "mounted " in out and "unmounted " in out
    with open("/proc/self/mountinfo") as handle:
        assert str(tmp_path) not in handle.read()


# -- bad input is refused with its exit code, never a traceback ------------------------------

def _src(tmp_path, name: str = "src", content: str = "x\n"):
    src = tmp_path / name
    src.mkdir()
    (src / "f").write_text(content)
    return str(src)


def _object_files(repo) -> set[str]:
    return {os.path.join(d, f) for d, _, files in os.walk(os.path.join(repo.path, "objects")) for f in files}


@pytest.mark.parametrize("value", ["99999999999999", "99999999999999999999999", "253402300800",
                                   "-62135596801", str(1 << 63)])
def test_commit_refuses_a_timestamp_no_date_can_show(tmp_path, repo, value):
    src = _src(tmp_path)
    proc = run_cli("commit", "-b", "t", "--timestamp", value, src, repo=repo.path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"--timestamp {value} is out of range" in proc.stderr
    proc = run_cli("commit", "-b", "t", src, repo=repo.path, check=False, env={"SOURCE_DATE_EPOCH": value})
    assert proc.returncode == 2, proc.stderr
    assert f"SOURCE_DATE_EPOCH {value} is out of range" in proc.stderr
    assert json.loads(run_cli("refs", "--json", repo=repo.path).stdout) == {}
    assert not _object_files(repo)  # refused before the tree was read


def test_commit_timestamps_at_the_limits_are_dated(tmp_path, repo):
    src = _src(tmp_path)
    for stamp in ("-62135596800", "253402300799"):
        run_cli("commit", "-b", "t", "--timestamp", stamp, src, repo=repo.path)
    log = json.loads(run_cli("log", "--json", "t", repo=repo.path).stdout)
    assert [c["date"] for c in log] == ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"]


def test_library_commit_refuses_out_of_range_timestamp_and_bad_text(tmp_path, repo):
    from store.errors import UsageError  # noqa: PLC0415
    from store.history import finish_commit  # noqa: PLC0415
    from store.source_dir import read_directory  # noqa: PLC0415

    src = _src(tmp_path)
    for kwargs, words in [({"timestamp": 10 ** 14}, "timestamp 100000000000000 is out of range"),
                          ({"subject": "x\udcff"}, "subject is not valid UTF-8: 'x\\xff'"),
                          ({"metadata": (("k", "\udcff"),)}, "metadata value of 'k' is not valid UTF-8")]:
        with repo.writing() as tx:
            tree, meta = read_directory(tx, src)
            with pytest.raises(UsageError, match=re.escape(words)):
                finish_commit(repo, tx, "t", tree, meta, **kwargs)
    assert repo.refs.read("t") is None


@pytest.mark.parametrize("stamp", [10 ** 14, (1 << 63) - 1, -(1 << 63)])
def test_stored_commit_with_undatable_timestamp_is_shown_as_a_number(tmp_path, repo, stamp):
    """An older sealtree accepted any timestamp: readers show those instead of crashing."""
    from store.commits import Commit  # noqa: PLC0415
    from store.source_dir import read_directory  # noqa: PLC0415

    with repo.writing() as tx:
        tree, meta = read_directory(tx, _src(tmp_path))
        commit_id = tx.add_commit(Commit(tree, meta, stamp, subject="old"))
        tx.publish()
    repo.refs.update("old", commit_id, None)
    assert f"Date:    {stamp}\n" in run_cli("log", "old", repo=repo.path).stdout
    assert f"Date:    {stamp}\n" in run_cli("show", "old", repo=repo.path).stdout
    shown = json.loads(run_cli("show", "--json", "old", repo=repo.path).stdout)
    assert shown["timestamp"] == stamp and shown["date"] == str(stamp)
    pack = str(tmp_path / "old.pack")
    run_cli("pack", "build", "old", "-o", pack, repo=repo.path)
    assert f"date      {stamp}\n" in run_cli("pack", "inspect", pack).stdout


@pytest.mark.parametrize("stamp, text", [(0, "1970-01-01T00:00:00Z"), (-1, "1969-12-31T23:59:59Z"),
                                         (10 ** 20, "100000000000000000000"),
                                         (-(10 ** 20), "-100000000000000000000"),
                                         (253402300800, "253402300800")])
def test_iso_time_never_fails(stamp, text):
    from sealtree.commands.common import iso_time  # noqa: PLC0415

    assert iso_time(stamp) == text


def test_status_shows_an_undatable_created_as_a_number(repo):
    commit = "a" * 64
    dep = {"id": f"{commit}.1", "commit": commit, "ref": "os/main", "version": "1", "created": 10 ** 20,
           "pack": f"packs/{commit}.pack", "pack_sha256": commit, "keys": "/keys", "tries_left": None,
           "mounted_at": []}
    os.mkdir(os.path.join(repo.path, "deploy"))
    with open(os.path.join(repo.path, "deploy", "state.json"), "w") as handle:
        json.dump({"format": "sealtree-deployments", "version": 1, "next_serial": 2,
                   "default": dep["id"], "previous": None, "booted": None, "deployments": [dep]}, handle)
    assert str(10 ** 20) in run_cli("status", repo=repo.path).stdout
    shown = json.loads(run_cli("status", "--json", repo=repo.path).stdout)
    assert shown["deployments"][0]["date"] == str(10 ** 20)


@pytest.mark.parametrize("args, words", [
    (["-s", "x\udcff"], "--subject is not valid UTF-8: 'x\\xff'"),
    (["--body", "line\n\udcfe"], "--body is not valid UTF-8: 'line\\n\\xfe'"),
    (["--version", "1.\udcff"], "--version is not valid UTF-8: '1.\\xff'"),
    (["--metadata", "k=\udcff"], "--metadata value of 'k' is not valid UTF-8: '\\xff'"),
    (["--metadata", "k\udcff=v"], "--metadata key is not valid UTF-8: 'k\\xff'"),
])
def test_commit_refuses_text_that_is_not_utf8(tmp_path, repo, args, words):
    """Undecodable argument bytes (surrogate escapes in Python) name the option and the bytes."""
    proc = run_cli("commit", "-b", "t", *args, _src(tmp_path), repo=repo.path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"sealtree: error: {words}\n"
    assert json.loads(run_cli("refs", "--json", repo=repo.path).stdout) == {}


def test_output_in_an_ascii_locale_escapes_what_it_cannot_encode(tmp_path, repo):
    run_cli("commit", "-b", "u", "-s", "café", "--body", "über", "--version", "ß1",
            "--metadata", "ключ=значение", _src(tmp_path), repo=repo.path)
    ascii_env = {"PYTHONIOENCODING": "ascii"}
    log = run_cli("log", "-n1", "u", repo=repo.path, env=ascii_env).stdout
    assert "    caf\\xe9" in log and "    \\xfcber" in log and "Version: \\xdf1" in log
    assert "\\u043a\\u043b\\u044e\\u0447: " in log
    assert "caf\\xe9" in run_cli("show", "u", repo=repo.path, env=ascii_env).stdout
    shown = json.loads(run_cli("log", "--json", "u", repo=repo.path, env=ascii_env).stdout)
    assert shown[0]["subject"] == "café"
    proc = run_cli("log", "nö", repo=repo.path, env=ascii_env, check=False)
    assert proc.returncode == 4 and "n\\xf6" in proc.stderr


@pytest.mark.parametrize("first, second, words", [
    ("a/b", "a", "a: conflicts with existing ref a/b"),
    ("a/b/c", "a", "a: conflicts with existing ref a/b/c"),
    ("main", "main/sub", "main/sub: conflicts with existing ref main"),
    ("main", "main/sub/deeper", "main/sub/deeper: conflicts with existing ref main"),
])
def test_commit_refuses_a_ref_that_collides_as_file_and_directory(tmp_path, repo, first, second, words):
    run_cli("commit", "-b", first, _src(tmp_path, "one"), repo=repo.path)
    before = _object_files(repo)
    proc = run_cli("commit", "-b", second, _src(tmp_path, "two", "new content\n"), repo=repo.path,
                   check=False)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr == f"sealtree: error: {words}\n"
    assert _object_files(repo) == before  # refused before anything was written
    assert list(json.loads(run_cli("refs", "--json", repo=repo.path).stdout)) == [first]


def test_ref_update_checks_collisions_and_frees_deleted_names(tmp_path, repo):
    from store.errors import RefError  # noqa: PLC0415
    from store.ids import RawId  # noqa: PLC0415

    one, two = RawId(bytes(31) + b"\1"), RawId(bytes(31) + b"\2")
    repo.refs.update("a/b", one, None)
    with pytest.raises(RefError, match="a: conflicts with existing ref a/b") as err:
        repo.refs.update("a", two, None)
    assert err.value.exit_code == 4
    with pytest.raises(RefError, match="a/b/c: conflicts with existing ref a/b"):
        repo.refs.update("a/b/c", two, None)
    repo.refs.update("a/b", None, one)  # deleting a/b frees the name a
    repo.refs.update("a", two, None)
    os.makedirs(os.path.join(repo.path, "refs", "heads", "c", "d"))  # empty, left by hand
    repo.refs.update("c", one, None)
    assert repo.refs.list() == {"a": two, "c": one}


def test_names_in_human_output_cannot_forge_a_line(tmp_path):
    """A file name with a newline (or a backslash) is shown escaped, as in error messages."""
    name = tmp_path / "x\nsha256:0000 forged\\"
    name.write_bytes(b"data")
    out = run_cli("digest", str(name)).stdout
    assert out.count("\n") == 1 and out.rstrip("\n").endswith(f"{tmp_path}/x\\x0asha256:0000 forged\\\\")


def test_the_tests_import_this_checkout():
    """``pythonpath`` in pyproject.toml puts the checkout before an installed copy."""
    import sealtree  # noqa: PLC0415

    assert os.path.dirname(os.path.dirname(sealtree.__file__)) == ROOT


def test_an_uncaught_exception_fails_the_test_as_a_traceback_would(repo, monkeypatch):
    """In-process, what a real run would end with a traceback is an AssertionError here."""
    from sealtree.commands import repo_cmds  # noqa: PLC0415

    def broken(args):
        raise ValueError("a bug")

    monkeypatch.setattr(repo_cmds, "cmd_refs", broken)
    with pytest.raises(AssertionError, match="raised ValueError"):
        run_cli("refs", repo=repo.path, check=False, in_process=True)
    assert run_cli("refs", "--nonsense", repo=repo.path, check=False, in_process=True).returncode == 2


def test_commit_tar_size_limits_refuse_before_storing(tmp_path, repo):
    import io
    import tarfile

    archive = tmp_path / "big.tar"
    with tarfile.open(archive, "w") as tar:
        for name, size in (("small", 100), ("big", 20000)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"\0" * size))
    proc = run_cli("commit", "-b", "t", "--tar", str(archive), "--max-file-size", "10K",
                   repo=repo.path, check=False)
    assert proc.returncode == 8 and "big: " in proc.stderr and "10240" in proc.stderr, proc.stderr
    proc = run_cli("commit", "-b", "t", "--tar", str(archive), "--max-total-size", "20000",
                   repo=repo.path, check=False)
    assert proc.returncode == 8, proc.stderr
    assert repo.refs.read("t") is None
    run_cli("commit", "-b", "t", "--tar", str(archive), "--max-file-size", "20000",
            "--max-total-size", "1M", repo=repo.path)
    proc = run_cli("commit", "-b", "t", str(tmp_path), "--max-file-size", "1K", repo=repo.path, check=False)
    assert proc.returncode == 2 and "go with --tar" in proc.stderr
