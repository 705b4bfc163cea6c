"""A vendor and a device in one directory: keys, a sample tree, a repository with the tree
committed, packed, signed and imported -- all through the CLI -- and the small helpers the
three suites share (copies of a repository, mount points, what is left behind)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass

from .cli import Cli, Result

BIG = 9000  # above the default inline limit (4096): a large object
REF = "os/main"


def sample_tree(root: str, *, seed: int = 0, scale: int = 1) -> None:
    """Every kind of path, small: large and inline files, identical content with different
    metadata, a hardlink, xattrs, setuid, owners, symlinks (one dangling, one absolute),
    an empty directory, a name that is not UTF-8.  ``scale`` multiplies the file count."""
    def write(rel: str | bytes, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0),
              xattrs: dict[str, bytes] | None = None) -> bytes:
        path = os.path.join(os.fsencode(root), os.fsencode(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chown(path, *owner)
        for name, value in (xattrs or {}).items():
            os.setxattr(path, name, value)
        os.chmod(path, mode)
        return path

    tool = write("usr/bin/tool", b"\x7fELF" + bytes(range(256)) * (BIG // 256) + bytes([seed % 256]), 0o755)
    os.link(tool, os.path.join(os.fsencode(root), b"usr/bin/tool-again"))
    write("usr/bin/su", b"S" * BIG, 0o4755)
    write("usr/lib/same", b"t" * BIG, 0o644, (1000, 1000))
    write("usr/lib/same2", b"t" * BIG, 0o600)
    write("opt/x", b"X" * BIG, 0o644, (0, 0), {"user.origin": b"vendor", "trusted.t": b"\0\xff"})
    write("etc/hostname", b"device\n", xattrs={"user.label": b"v"})
    write("etc/empty", b"")
    write("etc/secret", b"s3cret", 0o600, (0, 42))
    write("deep/a/b/c/large", bytes((i * 7 + seed) % 251 for i in range(3 * BIG)))
    write(b"etc/\xffodd", b"odd")
    for i in range(1, scale):
        write(f"many/d{i % 7}/f{i:05}", os.urandom(100 + (i * 37) % 9000))
    os.makedirs(os.path.join(root, "var/empty dir"))
    os.chmod(os.path.join(root, "var"), 0o711)
    os.symlink("usr/bin", os.path.join(root, "bin"))
    os.symlink("/nonexistent/target", os.path.join(root, "etc/dangling"))
    os.lchown(os.path.join(root, "etc/dangling"), 7, 8)


def key_id(public_pem: str) -> str:
    """A key's id (docs/FORMAT.md): SHA-256 of the raw 32-byte Ed25519 public key, in hex."""
    with open(public_pem) as handle:
        body = "".join(ln for ln in handle.read().splitlines() if ln and not ln.startswith("-----"))
    return hashlib.sha256(base64.b64decode(body)[-32:]).hexdigest()


def copy_tree(src: str, dst: str) -> None:
    """A copy keeping owners, modes, xattrs and hardlinks (cp -a)."""
    subprocess.run(["cp", "-a", "--", src, dst], check=True)


def mount_points() -> set[bytes]:
    """Every mount point of this mount namespace, from /proc/self/mountinfo (octal-decoded)."""
    out = set()
    with open("/proc/self/mountinfo", "rb") as handle:
        for line in handle:
            raw = line.split(b" ")[4]
            out.add(_unoctal(raw))
    return out


def _unoctal(raw: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i:i + 1] == b"\\" and raw[i + 1:i + 4].isdigit():
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def mounts_below(path: str) -> list[bytes]:
    prefix = os.fsencode(os.path.realpath(path))
    return sorted(m for m in mount_points() if m == prefix or m.startswith(prefix + b"/"))


def unmount_below(path: str) -> list[bytes]:
    """Detach everything mounted below ``path`` (deepest first); return what was there."""
    left = mounts_below(path)
    for point in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    return left


@dataclass
class Env:
    """``base``: keys (vendor, rogue, revoked-vendor), a keyring for each, the sample tree,
    and ``template``: a repository with the sample committed on os/main, its pack built,
    signed by the vendor key and imported.  Everything made through the CLI."""

    base: str
    cli: Cli

    @property
    def keys(self) -> str:
        return os.path.join(self.base, "keyring")

    @property
    def template(self) -> str:
        return os.path.join(self.base, "template")

    def key(self, name: str) -> str:
        return os.path.join(self.base, "keypairs", name)

    def must(self, *args: str, repo: str | None = None) -> Result:
        result = Cli(repo)(*args) if repo else self.cli(*args)
        if result.code != 0:
            raise AssertionError(result.describe())
        return result

    @classmethod
    def make(cls, base: str, *, scale: int = 1) -> Env:
        env = cls(base, Cli())
        os.makedirs(os.path.join(base, "keypairs"), exist_ok=True)
        for name in ("vendor", "rogue", "old"):
            env.must("keygen", env.key(name))
        for ring, keys in (("keyring", ["vendor", "old"]), ("rogue keyring", ["rogue"]),
                           ("revoking keyring", ["vendor", "old"])):
            os.makedirs(os.path.join(base, ring))
            for key in keys:
                shutil.copy(env.key(key) + ".pub", os.path.join(base, ring, key + ".pub"))
        with open(os.path.join(base, "revoking keyring", "revoked"), "w") as handle:
            handle.write(f"# the vendor key leaked\n{key_id(env.key('vendor') + '.pub')}\n")
        src = os.path.join(base, "src")
        os.mkdir(src)
        sample_tree(src, scale=scale)
        env.must("init", repo=env.template)
        env.commit = env.publish(src, "1.0", 1_700_000_000)
        return env

    def publish(self, src: str, version: str, timestamp: int, *, repo: str | None = None,
                key: str = "vendor", tar: bool = False) -> str:
        """Commit ``src`` on os/main, build its pack, sign, import; return the commit id."""
        repo = repo or self.template
        what = ["--tar", src] if tar else [src]
        out = self.must("commit", "-b", REF, "--version", version, "--timestamp", str(timestamp),
                        "--json", *what, repo=repo).stdout
        commit = json.loads(out)["commit"]
        pack = self.pack_path(commit)
        self.must("pack", "build", REF, "-o", pack, repo=repo)
        self.must("pack", "sign", pack, "--key", self.key(key))
        self.must("pack", "import", pack, "--keys", self.keys, "--allow-downgrade", repo=repo)
        return commit

    def pack_path(self, commit: str) -> str:
        return os.path.join(self.base, f"{commit[:16]}.pack")

    def fresh_repo(self, dst: str) -> str:
        copy_tree(self.template, dst)
        return dst
