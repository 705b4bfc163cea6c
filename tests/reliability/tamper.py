"""Tampering with a deployed repository: every item of threat model 1 and 2 (DESIGN.md).

A *world* is the sample tree deployed (default, not mounted), made once; each case works
on a copy: it changes one thing the way an attacker on the disk would, and names the
commands that must then refuse (``mount``, ``deploy``, ``fsck``, ``pack verify``, ``pack
import``) and the names one of which each refusal must mention (the tree path, the
object id or the file).  A refusal is a documented non-zero exit status, no traceback,
one ``sealtree: error:`` line (fsck: its report), and nothing left mounted.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

from . import packcodec as pc
from .cli import Cli, Result
from .env import REF, Env, copy_tree, mounts_below, unmount_below


@dataclass
class World:
    """A copy of the deployed sample: ``repo``, deployment ``dep``, a mount ``target``."""

    env: Env
    dir: str
    repo: str
    dep: str
    commit: str

    @property
    def farm(self) -> str:
        return os.path.join(self.repo, "deploy", self.dep)

    @property
    def target(self) -> str:
        path = os.path.join(self.dir, "target")
        os.makedirs(path, exist_ok=True)
        return path

    def object_of(self, rel: str) -> str:
        """The object file the farm links at ``rel``."""
        st = os.lstat(os.path.join(self.farm, rel))
        for directory, _dirs, files in os.walk(os.path.join(self.repo, "objects")):
            for name in files:
                path = os.path.join(directory, name)
                if os.lstat(path).st_ino == st.st_ino:
                    return path
        raise AssertionError(f"no object for {rel}")

    def kept_pack(self) -> str:
        return os.path.join(self.repo, "packs", f"{self.commit}.pack")

    def cli(self, *args: str) -> Result:
        return Cli(self.repo)(*args)


@dataclass
class Tamper:
    name: str
    threat: str  # "1" or "2"
    apply: Callable[[World], None]
    refused_by: tuple[str, ...]  # "mount", "deploy", "fsck", "verify", "import", "mount-default-keys"
    names: Callable[[World], list[str]] = lambda w: []
    xfail: str = ""  # why this case may fail on this branch (see the report)


@dataclass
class TamperResult:
    tamper: Tamper
    checks: dict[str, Result] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def _keep_meta_write(path: str, data: bytes) -> None:
    st = os.lstat(path)
    with open(path, "r+b") as handle:
        handle.write(data)
    os.chmod(path, st.st_mode & 0o7777)


def _object_names(rel: str) -> Callable[[World], list[str]]:
    def names(w: World) -> list[str]:
        obj = os.path.basename(w.object_of(rel)) if os.path.lexists(os.path.join(w.farm, rel)) else ""
        if not obj:
            return [rel]
        return [rel, obj[:16], os.path.basename(os.path.dirname(w.object_of(rel))) + obj[:14]]
    return names


def _replace_with_copy(path: str, data: bytes | None = None) -> None:
    """A new inode at ``path``: same (or other) content, same mode, owner, xattrs."""
    st = os.lstat(path)
    with open(path, "rb") as handle:
        content = handle.read() if data is None else data
    xattrs = [(n, os.getxattr(path, n)) for n in os.listxattr(path)]
    tmp = path + ".new"
    with open(tmp, "wb") as handle:
        handle.write(content)
    os.chown(tmp, st.st_uid, st.st_gid)
    for n, v in xattrs:
        os.setxattr(tmp, n, v)
    os.chmod(tmp, st.st_mode & 0o7777)
    os.rename(tmp, path)


def _resign(w: World, key: str) -> None:
    with open(w.kept_pack(), "rb") as handle:
        data = handle.read()
    with open(w.env.key(key), "rb") as handle:
        private = handle.read()
    with open(w.kept_pack() + ".sig", "wb") as handle:
        handle.write(pc.sign_bytes(data, private))


def _evil_pack(w: World, key: str) -> None:
    """The kept pack with /etc/hostname's content changed (consistently: digests, tree ids
    and commit id recomputed), signed by ``key``, put where the deployment's pack is."""
    with open(w.kept_pack(), "rb") as handle:
        pack = pc.parse(handle.read())
    for i, row in enumerate(pack.rows):
        if row.path == b"etc/hostname":
            pack.inline_data[i] = b"evil\n"
            row.entry.size = 5
            row.entry.digest = pc.fsverity_digest(b"evil\n")
    pc.fix_derived(pack)
    data = pc.encode(pack)
    with open(w.kept_pack(), "wb") as handle:
        handle.write(data)
    _resign(w, key)


def _move_keyring(w: World) -> None:
    """What an attacker who can write the repository does: a pack of its own tree signed by
    its own key, imported and deployed (as default) with its own keyring, so that
    deploy/state.json records that keyring as the deployment's."""
    _evil_pack(w, "rogue")
    evil = os.path.join(w.dir, "evil.pack")
    shutil.move(w.kept_pack(), evil)
    shutil.move(w.kept_pack() + ".sig", evil + ".sig")
    rogue = os.path.join(w.env.base, "rogue keyring")
    for args in (["pack", "import", evil, "--keys", rogue, "--allow-downgrade"],
                 ["deploy", REF, "--keys", rogue, "--allow-downgrade", "--verify", "userspace"]):
        result = w.cli(*args)
        assert result.code == 0, result.describe()


def _flip_pack_byte(w: World) -> None:
    with open(w.kept_pack(), "r+b") as handle:
        handle.seek(-3, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-3, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0x40]))


def _set_xattr(rel: str, name: str, value: bytes = b"y") -> Callable[[World], None]:
    def apply(w: World) -> None:
        os.setxattr(os.path.join(w.farm, rel), name, value, follow_symlinks=False)
    return apply


def _older_replayed(w: World) -> None:
    """A newer version is imported; the world's pack (1.0) is then the replayed one."""
    src = os.path.join(w.dir, "newer-src")
    copy_tree(os.path.join(w.env.base, "src"), src)
    with open(os.path.join(src, "etc", "hostname"), "w") as handle:
        handle.write("newer\n")
    w.env.publish(src, "1.1", 1_700_000_500, repo=w.repo)


FARM_FILE = "usr/bin/su"
TAMPERS: list[Tamper] = [
    # -- threat 1: objects -------------------------------------------------------------
    Tamper("object content modified", "1", lambda w: _keep_meta_write(w.object_of(FARM_FILE), b"evil"),
           ("mount", "deploy", "fsck"), _object_names(FARM_FILE)),
    Tamper("object removed", "1", lambda w: os.unlink(w.object_of("opt/x")),
           ("mount", "deploy", "fsck"), _object_names("opt/x")),
    Tamper("object replaced by a copy (another inode)", "1",
           lambda w: _replace_with_copy(w.object_of(FARM_FILE)), ("mount",), _object_names(FARM_FILE)),
    Tamper("object replaced by other content", "1",
           lambda w: _replace_with_copy(w.object_of(FARM_FILE), b"evil" * 3000),
           ("mount", "deploy", "fsck"), _object_names(FARM_FILE)),
    Tamper("object mode changed", "1", lambda w: os.chmod(w.object_of("usr/bin/tool"), 0o4755),
           ("mount", "deploy", "fsck"), _object_names("usr/bin/tool")),
    Tamper("object owner changed", "1", lambda w: os.chown(w.object_of("usr/bin/tool"), 1000, 0),
           ("mount", "deploy", "fsck"), _object_names("usr/bin/tool")),
    Tamper("object xattr added", "1", lambda w: os.setxattr(w.object_of("usr/bin/tool"), "user.evil", b"1"),
           ("mount", "deploy", "fsck"), _object_names("usr/bin/tool")),
    Tamper("object xattr removed", "1", lambda w: os.removexattr(w.object_of("opt/x"), "user.origin"),
           ("mount", "deploy", "fsck"), _object_names("opt/x")),
    Tamper("object xattr changed", "1", lambda w: os.setxattr(w.object_of("opt/x"), "trusted.t", b"evil"),
           ("mount", "deploy", "fsck"), _object_names("opt/x")),
    Tamper("object security.capability added", "1",
           lambda w: os.setxattr(w.object_of("usr/bin/tool"), "security.capability",
                                 bytes.fromhex("0000000201000000000000000000000000000000")),
           ("mount", "deploy", "fsck"), _object_names("usr/bin/tool")),
    Tamper("object appended to", "1", lambda w: open(w.object_of("deep/a/b/c/large"), "ab").write(b"+"),
           ("mount", "deploy", "fsck"), _object_names("deep/a/b/c/large")),
    # -- threat 1: the farm ----------------------------------------------------------------
    Tamper("farm link replaced by a copy", "1", lambda w: _replace_with_copy(os.path.join(w.farm, FARM_FILE)),
           ("mount",), lambda w: [FARM_FILE]),
    Tamper("farm link replaced by other content", "1",
           lambda w: _replace_with_copy(os.path.join(w.farm, FARM_FILE), b"evil"), ("mount",),
           lambda w: [FARM_FILE]),
    Tamper("farm link replaced by a symlink", "1",
           lambda w: (os.unlink(os.path.join(w.farm, FARM_FILE)),
                      os.symlink("/etc/passwd", os.path.join(w.farm, FARM_FILE))), ("mount",),
           lambda w: [FARM_FILE]),
    Tamper("farm link to another object", "1",
           lambda w: (os.unlink(os.path.join(w.farm, "usr/lib/same")),
                      os.link(w.object_of("usr/lib/same2"), os.path.join(w.farm, "usr/lib/same"))),
           ("mount",), lambda w: ["usr/lib/same"]),
    Tamper("farm file added", "1", lambda w: open(os.path.join(w.farm, "usr/bin/extra"), "wb").write(b"x"),
           ("mount",), lambda w: ["usr/bin/extra"]),
    Tamper("farm file added where the tmpfs has a file", "1",
           lambda w: (os.makedirs(os.path.join(w.farm, "etc")),
                      open(os.path.join(w.farm, "etc/hostname"), "wb").write(b"x")),
           ("mount",), lambda w: ["etc"]),
    Tamper("farm directory added", "1", lambda w: os.mkdir(os.path.join(w.farm, "usr/newdir")),
           ("mount",), lambda w: ["usr/newdir"]),
    Tamper("farm link removed", "1", lambda w: os.unlink(os.path.join(w.farm, "usr/lib/same")),
           ("mount",), lambda w: ["usr/lib/same"]),
    Tamper("farm directory mode changed", "1", lambda w: os.chmod(os.path.join(w.farm, "usr"), 0o777),
           ("mount",), lambda w: ["usr"]),
    Tamper("farm directory xattr added", "1", _set_xattr("usr", "user.evil"),
           ("mount",), lambda w: ["usr"]),
    # -- threat 1: overlay xattrs in the farm ------------------------------------------------
    Tamper("trusted.overlay.opaque on a farm directory", "1", _set_xattr("usr", "trusted.overlay.opaque"),
           ("mount",), lambda w: ["usr"]),
    Tamper("trusted.overlay.opaque on the farm root", "1", _set_xattr(".", "trusted.overlay.opaque"),
           ("mount",), lambda w: [w.dep, "deploy"]),
    Tamper("trusted.overlay.redirect on a farm directory", "1",
           _set_xattr("deep/a", "trusted.overlay.redirect", b"/etc"), ("mount",), lambda w: ["deep/a"]),
    Tamper("trusted.overlay.metacopy on a farm directory", "1",
           _set_xattr("usr/lib", "trusted.overlay.metacopy", b""), ("mount",), lambda w: ["usr/lib"]),
    Tamper("trusted.overlay.metacopy on a farm link", "1",
           _set_xattr(FARM_FILE, "trusted.overlay.metacopy", b""), ("mount", "fsck"),
           _object_names(FARM_FILE)),
    Tamper("trusted.overlay.redirect on a farm link", "1",
           _set_xattr(FARM_FILE, "trusted.overlay.redirect", b"/etc/shadow"), ("mount", "fsck"),
           _object_names(FARM_FILE)),
    Tamper("trusted.overlay.opaque on a farm link", "1",
           _set_xattr("opt/x", "trusted.overlay.opaque", b"y"), ("mount", "fsck"), _object_names("opt/x")),
    # -- threat 2: packs, keys, freshness, the trust anchor ----------------------------------
    Tamper("kept pack modified (signature kept)", "2", _flip_pack_byte, ("mount", "deploy", "verify"),
           lambda w: [w.commit[:16], "pack"]),
    Tamper("kept pack modified and re-signed by an unknown key", "2", lambda w: _evil_pack(w, "rogue"),
           ("mount", "deploy", "verify"), lambda w: [w.commit[:16], "pack", "key", "sig"]),
    Tamper("kept pack re-signed by an unknown key only", "2", lambda w: _resign(w, "rogue"),
           ("mount", "deploy", "verify"), lambda w: [w.commit[:16], "pack", "key", "sig"]),
    Tamper("kept pack's signature removed", "2", lambda w: os.unlink(w.kept_pack() + ".sig"),
           ("mount", "deploy", "verify"), lambda w: [w.commit[:16], "pack", "sig"]),
    Tamper("pack signed by a revoked key", "2", lambda w: None,
           ("mount-revoking", "verify-revoking", "import-revoking"),
           lambda w: [w.commit[:16], "pack", "key", "revoked"]),
    Tamper("replayed older pack", "2", _older_replayed, ("import-old", "deploy-old"),
           lambda w: [w.commit[:16], "pack", "older", "1.0", "1.1"]),
    Tamper("keyring path moved in deploy/state.json", "2", _move_keyring,
           ("mount-default-keys", "mount-default"),
           lambda w: ["pack", "key", "sig"]),
    Tamper("kept pack of another commit", "2",
           lambda w: (_evil_pack(w, "vendor")), ("mount", "deploy"),
           lambda w: [w.commit[:16], "pack", "commit"]),
]


class Tampering:
    """Makes the world once (``base/world``) and runs cases on copies."""

    def __init__(self, env: Env, base: str) -> None:
        self.env = env
        self.base = base
        os.makedirs(base, exist_ok=True)
        self.world_repo = os.path.join(base, "world")
        if not os.path.exists(self.world_repo):
            copy_tree(env.template, self.world_repo)
            result = Cli(self.world_repo)("deploy", REF, "--keys", env.keys, "--verify", "userspace")
            assert result.code == 0, result.describe()
        status = json.loads(Cli(self.world_repo)("status", "--json").stdout)
        self.dep = status["default"]

    def world(self, name: str) -> World:
        wdir = os.path.join(self.base, name.replace(" ", "_").replace("/", "_"))
        if os.path.exists(wdir):
            unmount_below(wdir)
            shutil.rmtree(wdir)
        os.makedirs(wdir)
        repo = os.path.join(wdir, "repo")
        copy_tree(self.world_repo, repo)
        return World(self.env, wdir, repo, self.dep, self.env.commit)

    def run(self, tamper: Tamper) -> TamperResult:
        w = self.world(tamper.name)
        names = tamper.names(w)  # before the change: an object removed has no inode to find
        tamper.apply(w)
        out = TamperResult(tamper)
        keys = self.env.keys
        revoking = os.path.join(self.env.base, "revoking keyring")
        commands = {
            "mount": ["mount", w.dep, w.target, "--keys", keys, "--verify", "userspace"],
            "mount-default-keys": ["mount", "default", w.target, "--verify", "userspace"],
            "mount-default": ["mount", "default", w.target, "--keys", keys, "--verify", "userspace"],
            "mount-revoking": ["mount", w.dep, w.target, "--keys", revoking, "--verify", "userspace"],
            "deploy": ["deploy", REF, "--keys", keys, "--verify", "userspace"],
            "deploy-old": ["deploy", w.commit, "--keys", keys, "--verify", "userspace"],
            "fsck": ["fsck"],
            "verify": ["pack", "verify", w.kept_pack(), "--keys", keys],
            "verify-revoking": ["pack", "verify", w.kept_pack(), "--keys", revoking],
            "import-revoking": ["pack", "import", self.env.pack_path(self.env.commit), "--keys", revoking],
            "import-old": ["pack", "import", self.env.pack_path(self.env.commit), "--keys", keys],
        }
        for check in tamper.refused_by:
            before = mounts_below(w.dir)
            result = w.cli(*commands[check])
            out.checks[check] = result
            text = result.stdout + result.stderr
            if result.code == 0:
                out.failures.append(f"{check} accepted it: {result.describe()}")
            elif result.traceback:
                out.failures.append(f"{check} crashed: {result.describe()}")
            elif check != "fsck" and not result.clean_error():
                out.failures.append(f"{check} refused uncleanly: {result.describe()}")
            elif names and not any(n in text for n in names):
                out.failures.append(f"{check} did not name any of {names}: {result.describe()}")
            left = sorted(set(mounts_below(w.dir)) - set(before))
            if left:
                out.failures.append(f"{check} left mounts: {left}")
                for point in left:
                    w.cli("umount", os.fsdecode(point))
                unmount_below(w.dir)
        if not out.failures:
            shutil.rmtree(w.dir, ignore_errors=True)
        return out
