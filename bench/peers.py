"""The peer tools sealtree is measured against: ``ostree`` and ``fsverity``.

Each function returns the argv of one command; :mod:`bench.proc` runs it.
Choices made for fairness, recorded in the report by :func:`describe`:

* the ostree repository is ``--mode=bare`` (files stored as themselves, so a
  checkout is a hardlink farm, like a sealtree deployment);
* ``ostree commit`` runs with ostree's defaults, which fsync every object
  before the ref is written (``core.fsync`` unset, i.e. true), the same
  durability sealtree gives;
* ``ostree checkout`` runs as root *without* ``-U``: from a bare repository
  that is the mode that hardlinks (``-U``, user mode, would copy every file out
  of a bare repository, because the objects' ownership would not match).
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.proc import run
from bench.tools import ensure_tool

Argv = list[str]


def ostree() -> str:
    """The ``ostree`` binary, installed with apt if missing."""
    return ensure_tool("ostree", "ostree")


def fsverity() -> str:
    """The ``fsverity`` binary (fsverity-utils), installed with apt if missing."""
    return ensure_tool("fsverity", "fsverity")


def ostree_init(repo: Path, mode: str = "bare") -> Argv:
    """``ostree init --repo R --mode=MODE`` (bare unless told: ``archive`` for a served one)."""
    return [ostree(), "init", f"--repo={repo}", f"--mode={mode}"]


def ostree_commit_tar(repo: Path, branch: str, archive: Path, timestamp: int | None = None) -> Argv:
    """``ostree commit --repo R -b B --tree=tar=FILE`` (libarchive reads it; fsync on)."""
    return _ostree_commit(repo, branch, f"tar={archive}", timestamp)


def ostree_export(repo: Path, branch: str, out: Path) -> Argv:
    """``ostree export --repo R -o FILE B`` (an uncompressed tar, xattrs included)."""
    return [ostree(), "export", f"--repo={repo}", f"--output={out}", branch]


def ostree_remote_add(repo: Path, name: str, url: str) -> Argv:
    """``ostree remote add --no-gpg-verify NAME URL`` (unsigned: see ``describe``)."""
    return [ostree(), "remote", "add", f"--repo={repo}", "--no-gpg-verify", name, url]


def ostree_pull(repo: Path, remote: str, branch: str) -> Argv:
    """``ostree pull --repo R NAME B``: objects fetched from the archive repository, in
    parallel (ostree's default), and unpacked into the bare repository."""
    return [ostree(), "pull", f"--repo={repo}", remote, branch]


def ostree_commit(repo: Path, branch: str, tree: Path, timestamp: int | None = None) -> Argv:
    """``ostree commit --repo R -b B --tree=dir=DIR`` (fsync left at ostree's default: on)."""
    return _ostree_commit(repo, branch, f"dir={tree}", timestamp)


def _ostree_commit(repo: Path, branch: str, tree: str, timestamp: int | None) -> Argv:
    argv = [ostree(), "commit", f"--repo={repo}", f"--branch={branch}", f"--tree={tree}",
            "--subject=bench", "--no-bindings"]
    if timestamp is not None:
        argv.append(f"--timestamp=@{timestamp}")
    return argv


def ostree_checkout(repo: Path, branch: str, dest: Path) -> Argv:
    """``ostree checkout --repo R B DEST``: a hardlink checkout of a bare repository as root."""
    return [ostree(), "checkout", f"--repo={repo}", branch, str(dest)]


def ostree_fsck(repo: Path) -> Argv:
    """``ostree fsck --repo R``: re-hash every object reachable from every ref."""
    return [ostree(), "fsck", f"--repo={repo}"]


def fsverity_digest(*files: Path) -> Argv:
    """``fsverity digest FILE...`` (SHA-256, 4096-byte blocks, no salt: the defaults)."""
    return [fsverity(), "digest", *map(str, files)]


def versions() -> dict[str, str]:
    """The peers' versions, for the report."""
    ostree_out = run([ostree(), "--version"]).stdout
    version = next((line.split(":", 1)[1].strip().strip("'") for line in ostree_out.splitlines()
                    if line.strip().startswith("Version")), ostree_out.strip())
    return {"ostree": version, "fsverity": run([fsverity(), "--version"]).stdout.split("\n")[0].strip()}


def describe() -> dict[str, str]:
    """How each peer is invoked and why, for results.json."""
    return {
        "ostree repo mode": "bare",
        "ostree commit fsync": "ostree default (core.fsync unset = on): objects synced before the ref",
        "ostree checkout": "as root, no -U: bare repository -> hardlink checkout",
        "fsverity digest": "defaults: sha256, 4096-byte blocks, no salt",
        "ostree pull": ("from an archive-mode repository served by the same nginx, into a bare "
                        "repository, --no-gpg-verify (sealtree's pull checks its signed index "
                        "and pack: ostree does less work)"),
        "ostree commit --tree=tar / export": "bare repository, fsync on; export to a file",
    }


def hardlink_ratio(tree: Path) -> float:
    """Fraction of regular files in ``tree`` with more than one link (checks a checkout hardlinked)."""
    regular = linked = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_mode & 0o170000 == 0o100000:
                regular += 1
                linked += st.st_nlink > 1
    return linked / regular if regular else 0.0
