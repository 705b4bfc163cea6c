"""Error paths a user meets: each names the user's path or object (never a temporary file of
ours), exits with its class's status, and shows no traceback (``run_cli`` checks that)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from pack.keys import load_private_key
from pack.reader import layout_sha256
from pack.signature import pack_sha256, sign, sign_pack, signature_path, write_signatures
from sealtree.cli import HINTS
from sealtree.commands import repo_cmds
from store.errors import (
    CrossDevice,
    DowngradeError,
    NotARepository,
    PackError,
    PackNotKept,
    SpecialFile,
)
from store.ids import to_hex
from store.repo import Repository
from store.walk import lookup
from tests.helpers import ROOT, run_cli

BIG = 100_000  # above the default inline threshold: a large object, outside the pack


@pytest.fixture
def site(tmp_path):  # not conftest's: a small tree, no mounts, handed out as a dict of paths
    """A repository with ``main`` committed (/etc/motd, /usr/bin/big), its pack built and signed,
    a vendor key and a keyring trusting it."""
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "usr" / "bin").mkdir(parents=True)
    (src / "etc" / "motd").write_text("hello\n")
    (src / "usr" / "bin" / "big").write_bytes(bytes(range(256)) * (BIG // 256) + b"x" * (BIG % 256))
    os.symlink("etc/motd", src / "link")
    repo = str(tmp_path / "repo")
    run_cli("init", repo=repo)
    run_cli("commit", "-b", "main", "-s", "msg", "--timestamp", "100", str(src), repo=repo)
    key = str(tmp_path / "vendor.key")
    run_cli("keygen", key)
    ring = tmp_path / "ring"
    ring.mkdir()
    shutil.copy(key + ".pub", ring / "vendor.key.pub")
    pack = str(tmp_path / "main.pack")
    run_cli("pack", "build", "main", "-o", pack, repo=repo)
    run_cli("pack", "sign", pack, "--key", key)
    return {"base": tmp_path, "repo": repo, "key": key, "ring": str(ring), "pack": pack}


def _error(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line, checked to be one."""
    assert proc.stderr.startswith("sealtree: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr.removeprefix("sealtree: error: ").rstrip("\n")


def _no_temp_names(base, text: str) -> None:
    """Nothing of ours leaks: neither a temp file's name in ``text`` nor a left-over file
    beside the outputs (the repository's own tmp/ is its business)."""
    assert ".tmp" not in text and "sealtree-checkout" not in text and "/tmp" not in text.replace(
        str(base), ""), text
    for name in os.listdir(base):
        assert ".tmp" not in name and not name.startswith(("tmp", ".sealtree-checkout")), name


def _signed_garbage(site, name: str, data: bytes) -> str:
    """A file that is not a pack, with a good signature by the vendor (as if signed elsewhere)."""
    path = str(site["base"] / name)
    with open(path, "wb") as handle:
        handle.write(data)
    write_signatures(signature_path(path), [sign(pack_sha256(path), load_private_key(site["key"]))])
    return path


# -- A: errors name the user's destination, never our temp file --------------------------------

@pytest.mark.parametrize("command", [["pack", "build", "main", "-o"], ["export", "main", "-o"]])
def test_output_that_is_a_directory_is_named(site, command):
    out = site["base"] / "k"
    out.mkdir()
    proc = run_cli(*command, str(out), repo=site["repo"], check=False)
    assert proc.returncode == 1, proc.stderr
    assert _error(proc) == f"{out}: is a directory"
    _no_temp_names(site["base"], proc.stderr)
    assert os.listdir(out) == []


@pytest.mark.parametrize("command", [["pack", "build", "main", "-o"], ["export", "main", "-o"], ["keygen"],
                                     ["pack", "digest", "PACK", "-o"]])
def test_output_in_a_missing_directory_is_named(site, command):
    directory = site["base"] / "no-dir"
    out = directory / "out"
    args = [site["pack"] if word == "PACK" else word for word in command]
    proc = run_cli(*args, str(out), repo=site["repo"], check=False)
    assert proc.returncode == 1, proc.stderr
    assert _error(proc) == f"{out}: cannot create it in {directory}: No such file or directory"
    _no_temp_names(site["base"], proc.stderr)


def test_output_below_a_file_is_named(site):
    out = site["base"] / "vendor.key" / "x.pack"
    proc = run_cli("pack", "build", "main", "-o", str(out), repo=site["repo"], check=False)
    assert proc.returncode == 1, proc.stderr
    assert _error(proc) == f"{out}: cannot create it in {site['key']}: Not a directory"


@pytest.mark.parametrize("command,what", [
    (["export", "main", "-o", ""], "-o"),
    (["pack", "build", "main", "-o", ""], "-o"),
    (["pack", "digest", "PACK", "-o", ""], "-o"),
    (["keygen", ""], "KEYFILE"),
    (["checkout", "main", ""], "DEST"),
])
def test_empty_output_path_is_a_usage_error(site, command, what):
    args = [site["pack"] if word == "PACK" else word for word in command]
    before = sorted(os.listdir(site["base"]))
    proc = run_cli(*args, repo=site["repo"], check=False)
    assert proc.returncode == 2, proc.stderr
    assert _error(proc).startswith(f"{what} is an empty path")
    _no_temp_names(site["base"], proc.stderr)
    assert sorted(os.listdir(site["base"])) == before


def test_a_failed_write_names_the_destination(site):
    """A write that fails half-way (here: over the file size limit) names the archive being
    written and leaves neither it nor the temporary file behind."""
    out = site["base"] / "out.tar"
    cmd = [sys.executable, "-c", "import resource, sys; "
           "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY)); "
           "from sealtree.cli import main; sys.exit(main(sys.argv[1:]))",
           "--repo", site["repo"], "export", "main", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert _error(proc) == f"{out}: File too large"
    assert not out.exists()
    _no_temp_names(site["base"], proc.stderr)


def test_checkout_names_tree_paths_not_its_temp_directory(site):
    repo = Repository.open(site["repo"])
    entry = lookup(repo.objects, repo.commit_of("main")[1].root_tree, b"usr/bin/big")
    assert entry is not None
    os.unlink(repo.objects.file_path(entry.digest, entry.meta))
    dest = site["base"] / "co"
    proc = run_cli("checkout", "main", str(dest), repo=site["repo"], check=False)
    assert proc.returncode == 5, proc.stderr
    assert _error(proc) == f"/usr/bin/big: object {to_hex(entry.digest)} is missing"
    assert not dest.exists()
    _no_temp_names(site["base"], proc.stderr)


# -- B: pack format errors start with the pack's path, once --------------------------------------

GARBAGE = {"empty": (b"", "truncated header: need 82 bytes, got 0 at offset 0"),
           "garbage": (b"NOTAPACK" + bytes(200),
                       "bad magic: expected b'SEALPACK', got b'NOTAPACK' at offset 0")}


@pytest.mark.parametrize("name", sorted(GARBAGE))
@pytest.mark.parametrize("command", [["pack", "verify", "PACK", "--keys", "RING"],
                                     ["pack", "inspect", "PACK"],
                                     ["pack", "import", "PACK", "--keys", "RING"]])
def test_pack_format_errors_name_the_pack_once(site, name, command):
    data, words = GARBAGE[name]
    path = _signed_garbage(site, name, data)
    args = [{"PACK": path, "RING": site["ring"]}.get(word, word) for word in command]
    proc = run_cli(*args, repo=site["repo"], check=False)
    assert proc.returncode == 11, proc.stderr
    assert _error(proc) == f"{path}: {words}"
    assert proc.stderr.count(path) == 1


def test_deploy_names_a_bad_kept_pack_once(site, needs_root):
    from pack.importer import kept_pack_path  # noqa: PLC0415

    run_cli("pack", "import", site["pack"], "--keys", site["ring"], repo=site["repo"])
    repo = Repository.open(site["repo"])
    kept = kept_pack_path(repo, repo.resolve("main"))
    with open(kept, "wb") as handle:
        handle.write(GARBAGE["garbage"][0])
    write_signatures(kept + ".sig", [sign(pack_sha256(kept), load_private_key(site["key"]))])
    proc = run_cli("deploy", "main", "--keys", site["ring"], repo=site["repo"], check=False)
    assert proc.returncode == 11, proc.stderr
    assert _error(proc).startswith(f"{kept}: ") and "bad magic" in proc.stderr
    assert proc.stderr.count(kept) == 1


# -- C: usage errors exit 2; a missing pack is a pack error for inspect as for verify ----------

@pytest.mark.parametrize("option,words", [
    (["--block-size", "1000"], "block size must be a power of two in [64, 65536], got 1000"),
    (["--block-size", "131072"], "got 131072"),
    (["--salt", "zz"], "--salt is not hex: 'zz'"),
    (["--salt", "abc"], "--salt is not hex: 'abc'"),
    (["--salt", "aa" * 33], "salt is at most 32 bytes, got 33"),
])
def test_digest_bad_parameters_are_usage_errors(site, option, words):
    proc = run_cli("digest", *option, site["pack"], check=False)
    assert proc.returncode == 2, proc.stderr
    assert words in _error(proc)


def test_digest_good_parameters_still_work(site):
    proc = run_cli("digest", "--block-size", "1024", "--salt", "aa" * 32, site["pack"])
    assert proc.stdout.endswith(f" {site['pack']}\n")


@pytest.mark.parametrize("command", [["pack", "inspect"], ["pack", "verify", "--keys", "RING"],
                                     ["pack", "sign", "--key", "KEY"], ["pack", "digest"]])
def test_missing_pack_is_a_pack_error_everywhere(site, command):
    missing = str(site["base"] / "nonexist.pack")
    args = [{"RING": site["ring"], "KEY": site["key"]}.get(word, word) for word in command]
    proc = run_cli(*args, missing, check=False)
    assert proc.returncode == 11, proc.stderr
    assert _error(proc) == f"{missing}: no such pack file"


def test_inspect_of_a_directory_is_a_pack_error(site):
    proc = run_cli("pack", "inspect", str(site["base"]), check=False)
    assert proc.returncode == 11, proc.stderr
    assert _error(proc) == f"{site['base']}: not a regular file"


# -- D: what is not a pack is neither signed nor digested ---------------------------------------

def _not_a_pack(site) -> dict[str, str]:
    """Files that are not packs: empty, garbage, a good pack cut short or extended."""
    good = open(site["pack"], "rb").read()
    files = {"empty": b"", "garbage": b"NOTAPACK" + bytes(200), "truncated": good[:-1],
             "extended": good + b"\0"}
    out = {}
    for name, data in files.items():
        path = site["base"] / name
        path.write_bytes(data)
        out[name] = str(path)
    return out


def test_sign_refuses_what_is_not_a_pack(site):
    for name, path in _not_a_pack(site).items():
        proc = run_cli("pack", "sign", path, "--key", site["key"], check=False)
        assert proc.returncode == 11, (name, proc.stderr)
        assert _error(proc).startswith(f"{path}: ") and "signed" not in proc.stdout, name
        assert not os.path.exists(signature_path(path)), name


def test_digest_refuses_what_is_not_a_pack(site):
    msg = site["base"] / "msg"
    for name, path in _not_a_pack(site).items():
        for extra in ([], ["-o", str(msg)], ["--json"]):
            proc = run_cli("pack", "digest", path, *extra, check=False)
            assert proc.returncode == 11, (name, extra, proc.stderr)
            assert _error(proc).startswith(f"{path}: "), (name, extra)
            # nothing on stdout but, with --json, the error as a JSON document
            assert (json.loads(proc.stdout)["exit_status"] == 11) if extra == ["--json"] \
                else proc.stdout == "", (name, extra)
            assert not msg.exists()


def test_add_signature_refuses_what_is_not_a_pack(site):
    path = _not_a_pack(site)["garbage"]
    sig = site["base"] / "sig"
    sig.write_bytes(load_private_key(site["key"]).sign(b"anything"))
    proc = run_cli("pack", "add-signature", path, "--pubkey", site["key"] + ".pub", str(sig), check=False)
    assert proc.returncode == 11, proc.stderr
    assert _error(proc).startswith(f"{path}: bad magic")


def test_library_signing_checks_the_layout_and_signs_the_same_digest(site):
    assert layout_sha256(site["pack"]) == pack_sha256(site["pack"])
    truncated = _not_a_pack(site)["truncated"]
    with pytest.raises(PackError, match=f"^{truncated}: ") as info:
        sign_pack(truncated, load_private_key(site["key"]))
    assert info.value.offset is not None


# -- E: cat of a missing large object is a missing object, named like export names it -----------

def test_cat_of_a_missing_object_names_the_tree_path_and_object(site):
    fresh = str(site["base"] / "device")
    run_cli("init", repo=fresh)
    run_cli("pack", "import", site["pack"], "--keys", site["ring"], repo=fresh)  # large object left out
    repo = Repository.open(fresh)
    entry = lookup(repo.objects, repo.commit_of("main")[1].root_tree, b"usr/bin/big")
    assert entry is not None
    proc = run_cli("cat", "main", "/usr/bin/big", repo=fresh, check=False)
    assert proc.returncode == 5, proc.stderr
    assert _error(proc) == f"/usr/bin/big: object {to_hex(entry.digest)} is missing"
    assert proc.stdout == ""
    export = run_cli("export", "main", "-o", str(site["base"] / "x.tar"), repo=fresh, check=False)
    assert export.returncode == 5 and to_hex(entry.digest) in export.stderr


def test_cat_of_an_object_deleted_by_hand(site):
    repo = Repository.open(site["repo"])
    entry = lookup(repo.objects, repo.commit_of("main")[1].root_tree, b"usr/bin/big")
    assert entry is not None
    os.unlink(repo.objects.file_path(entry.digest, entry.meta))
    proc = run_cli("cat", "main", "usr/bin/big", repo=site["repo"], check=False)
    assert proc.returncode == 5, proc.stderr
    assert _error(proc) == f"usr/bin/big: object {to_hex(entry.digest)} is missing"


# -- F: a path the tree lacks is the user's mistake (exit 1), named as written -------------------

@pytest.mark.parametrize("args,message", [
    (["ls", "main", "/nonexist"], "/nonexist: no such path in the tree"),
    (["ls", "-R", "main", "/etc/nope"], "/etc/nope: no such path in the tree"),
    (["ls", "main", "/etc/motd/below-a-file"], "/etc/motd/below-a-file: no such path in the tree"),
    (["cat", "main", "/nope"], "/nope: no such path in the tree"),
    (["cat", "main", "etc/nope"], "etc/nope: no such path in the tree"),
    (["cat", "main", "/"], "/: is a directory"),
    (["cat", "main", "/etc"], "/etc: is a directory"),
    (["cat", "main", "/usr/bin/"], "/usr/bin/: is a directory"),
    (["cat", "main", "/link"], "/link: is a symlink, not a regular file"),
])
def test_tree_path_errors(site, args, message):
    proc = run_cli(*args, repo=site["repo"], check=False)
    assert proc.returncode == 1, proc.stderr
    assert _error(proc) == message


def test_tree_paths_that_exist_still_work(site):
    assert run_cli("cat", "main", "/etc/motd", repo=site["repo"]).stdout == "hello\n"
    assert "/etc/motd" in run_cli("ls", "main", "/etc", repo=site["repo"]).stdout


# -- scripting: --repo after the command, ref deletion, JSON documents on failure -------------

def test_repo_may_follow_the_command_as_ostree_takes_it(site):
    after = run_cli("refs", "--repo", site["repo"]).stdout
    assert after == run_cli("refs", repo=site["repo"]).stdout and after.endswith(" main\n")
    nested = run_cli("pack", "build", "main", "-o", str(site["base"] / "again.pack"), "--repo", site["repo"])
    assert nested.returncode == 0


def test_refs_delete_then_prune_reclaims(site):
    repo = site["repo"]
    head = run_cli("rev-parse", "main", repo=repo).stdout.strip()
    proc = run_cli("refs", "--delete", "nope", repo=repo, check=False)
    assert proc.returncode == 4 and _error(proc) == "nope: no such ref"
    out = run_cli("refs", "--delete", "main", "--json", repo=repo).stdout
    assert json.loads(out) == {"deleted": {"main": head}}
    assert run_cli("refs", repo=repo).stdout == ""
    assert run_cli("prune", repo=repo).stdout.startswith("deleted 7 objects")  # 3 files, 3 trees, 1 commit
    run_cli("commit", "-b", "main", str(site["base"] / "src"), repo=repo)  # the name is free again


def test_log_counts_must_be_positive(site):
    proc = run_cli("log", "main", "-n", "-1", repo=site["repo"], check=False)
    assert proc.returncode == 2 and "must be at least 1, got -1" in proc.stderr


@pytest.mark.parametrize("args,code", [
    (["log", "--json", "nope"], 4),
    (["pack", "verify", "--json", "missing.pack", "--keys", "ring"], 11),
    (["pack", "verify", "--json", "main.pack", "--keys", "empty ring"], 12),
])
def test_json_commands_print_a_json_document_when_they_fail(site, args, code):
    (site["base"] / "empty ring").mkdir()
    args = [str(site["base"] / a) if a.endswith((".pack", "ring")) else a for a in args]
    proc = run_cli(*args, repo=site["repo"], check=False)
    doc = json.loads(proc.stdout)
    assert proc.returncode == code and doc["ok"] is False and doc["exit_status"] == code
    assert doc["error"] == _error(proc)


def test_json_output_is_valid_unicode_for_undecodable_names(site):
    objects = os.path.join(site["repo"], "objects")
    prefix = sorted(os.listdir(objects))[0]
    open(os.fsencode(os.path.join(objects, prefix)) + b"/stray\xff", "w").close()
    proc = run_cli("fsck", "--json", repo=site["repo"], check=False)
    proc.stdout.encode("utf-8")  # strict: no lone surrogates
    [problem] = json.loads(proc.stdout)["problems"]
    assert problem["kind"] == "stray" and problem["path"].endswith("/stray\\xff")


def test_fsck_reports_a_bad_ref_and_checks_the_others(site):
    repo = site["repo"]
    with open(os.path.join(repo, "refs", "heads", "broken"), "wb") as handle:
        handle.write(b"\xff\n")
    proc = run_cli("fsck", "--json", repo=repo, check=False)
    doc = json.loads(proc.stdout)
    assert proc.returncode != 0 and doc["roots"] == 1  # main, still checked
    assert [(p["kind"], p["message"]) for p in doc["problems"]] == [("corrupt", "ref broken: not ASCII")]


# -- hints: what to do about an error, in the CLI's terms, on a line of its own -----------------

def _hint(proc: subprocess.CompletedProcess[str]) -> str:
    """The hint, checked to be the second and last line, after the one error line (which
    names no option: the library layers do not know the CLI's)."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("sealtree: error: "), proc.stderr
    assert lines[1].startswith("sealtree: hint: ") and "use --" not in lines[0], proc.stderr
    return lines[1].removeprefix("sealtree: hint: ")


@pytest.mark.parametrize("error", [SpecialFile("is a FIFO", path="/src/fifo"),
                                   CrossDevice("hardlinks cannot cross filesystems", path="/dest"),
                                   NotARepository("not a sealtree repository", path="/r"),
                                   PackNotKept("no pack kept for commit 00", path="/r/packs/00.pack"),
                                   DowngradeError("not newer than the one already accepted")])
def test_each_hint_is_printed_after_the_error_and_in_the_json_document(site, monkeypatch, error):
    """The CLI's one table of hints, for every class in it (a command made to raise it)."""
    def failing(args):
        raise error

    monkeypatch.setattr(repo_cmds, "cmd_refs", failing)
    proc = run_cli("refs", "--json", repo=site["repo"], check=False, in_process=True)
    assert proc.returncode == error.exit_code
    assert proc.stderr.splitlines()[0] == f"sealtree: error: {error}"
    assert _hint(proc) == HINTS[type(error)]
    assert json.loads(proc.stdout) == {"ok": False, "error": str(error), "exit_status": error.exit_code,
                                       "hint": HINTS[type(error)]}


def test_an_error_without_a_hint_is_one_line_and_null_in_json(site):
    proc = run_cli("log", "--json", "nope", repo=site["repo"], check=False)
    assert proc.returncode == 4 and _error(proc) == "nope: no such ref"
    assert json.loads(proc.stdout)["hint"] is None


def test_a_special_file_in_the_source_gets_the_skip_special_hint(tmp_path, repo):
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    proc = run_cli("commit", "-b", "x", str(src), repo=repo.path, check=False)
    assert proc.returncode == 8 and str(src / "fifo") in proc.stderr.splitlines()[0]
    assert _hint(proc) == "use --skip-special to leave devices, FIFOs and sockets out"
    run_cli("commit", "-b", "x", "--skip-special", str(src), repo=repo.path)


def test_a_checkout_across_filesystems_gets_the_copy_hint(site):
    if os.stat("/dev/shm").st_dev == os.stat(site["repo"]).st_dev:
        pytest.skip("/dev/shm is on the repository's filesystem")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        proc = run_cli("checkout", "main", os.path.join(other, "co"), repo=site["repo"], check=False)
        assert proc.returncode == 3
        assert _hint(proc) == "use --copy to copy the files instead of hardlinking them"
        run_cli("checkout", "--copy", "main", os.path.join(other, "co"), repo=site["repo"])


def test_a_missing_repository_gets_the_init_hint(tmp_path):
    proc = run_cli("refs", repo=str(tmp_path / "nowhere"), check=False)
    assert proc.returncode == 3 and "not a sealtree repository" in proc.stderr.splitlines()[0]
    assert _hint(proc) == "create one with 'sealtree --repo PATH init'"


def test_deploying_a_commit_without_its_pack_gets_the_import_hint(site):
    proc = run_cli("deploy", "main", "--keys", site["ring"], repo=site["repo"], check=False)
    assert proc.returncode == 14
    assert _hint(proc) == "import a signed pack of it first (sealtree pack import PACK --keys DIR)"


def test_an_os_error_names_its_file_escaped(site, monkeypatch):
    """What the operating system refused, on a file whose name holds a newline: one line."""
    def refused(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/a\nsealtree: verified ok")

    monkeypatch.setattr(repo_cmds, "cmd_refs", refused)
    proc = run_cli("refs", repo=site["repo"], check=False, in_process=True)
    assert proc.returncode == 1
    assert _error(proc) == "/srv/a\\x0asealtree: verified ok: Permission denied"
