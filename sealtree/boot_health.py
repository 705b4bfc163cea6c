"""Boot assessment: is the system booted through sealtree healthy enough to be marked good?

Two checks, made once the system is up (``sealtree boot-check``, run by
``integration/systemd/sealtree-mark-good.service``):

* the kernel log of this boot (``/dev/kmsg``) has no fs-verity error (``FILE CORRUPTED``:
  bytes of a sealed file that do not match its Merkle tree) and no overlayfs verity error
  (a metacopy file whose lower file has no, or the wrong, fs-verity digest).  Such an
  error names a device and an inode; the inode is looked up among the repository's
  objects and in the booted deployment's farm, which hardlinks them, so the report names
  the object and the path in the tree where it can;
* no unit listed in the vendor's required-units file (``/etc/sealtree/required-units``,
  one unit name a line, ``#`` comments; docs/FORMAT.md section 15) failed: its
  ``systemctl show`` says ``LoadState=loaded`` and ``Result=success`` and not
  ``ActiveState=failed``.

This module reads and decides; it never prints and never marks anything.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from store.errors import UsageError

KMSG = "/dev/kmsg"
REQUIRED_UNITS = "/etc/sealtree/required-units"
BOOTED = "/run/sealtree/booted"

# fs/verity: fsverity_msg() prints "fs-verity (<sb id>, inode <ino>): <message>"
_FSVERITY = re.compile(r"fs-verity \((?P<dev>[^,)]+), inode (?P<ino>\d+)\): (?P<msg>.*)")
# fs-verity messages that mean the data is not what was sealed (others are informational)
_FSVERITY_BAD = ("FILE CORRUPTED", "Error", "error")
# fs/overlayfs (6.6+): "lower file '<name>' has no fs-verity digest", "... the wrong
# fs-verity digest", "failed to get verity digest of ...", "... has no digest" ...
_OVERLAY = re.compile(r"overlayfs: (?P<msg>.*verity.*)", re.IGNORECASE)
_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@\\-]+\."
                        r"(service|socket|target|mount|path|timer|device|swap|scope|slice|automount)$")


@dataclass(frozen=True)
class VerityError:
    """One kernel message saying that sealed bytes were refused."""

    message: str  # the kernel's text (the first, when it said so several times)
    device: str | None = None
    inode: int | None = None
    object: str | None = None  # the object's path under the repository's objects/, when found
    path: str | None = None  # the file's path in the booted tree, when found
    count: int = 1  # how many times the kernel said it (each read of the file is one)

    def describe(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.object is not None:
            where.append(f"object {self.object}")
        if self.inode is not None and not where:
            where.append(f"inode {self.inode} on {self.device}")
        again = f" ({self.count} times)" if self.count > 1 else ""
        return f"{', '.join(where) or 'unknown file'}: {self.message}{again}"


@dataclass(frozen=True)
class UnitState:
    """What ``systemctl show`` says of one required unit."""

    name: str
    load_state: str
    active_state: str
    result: str

    @property
    def failed(self) -> bool:
        return self.load_state != "loaded" or self.active_state == "failed" or self.result != "success"

    def describe(self) -> str:
        return f"{self.name} ({self.load_state}, {self.active_state}, result {self.result})"


@dataclass
class Health:
    """The outcome of the checks for the booted deployment."""

    deployment: str | None
    verity_errors: list[VerityError] = field(default_factory=list)
    failed_units: list[UnitState] = field(default_factory=list)
    required_units: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.verity_errors and not self.failed_units

    def reasons(self) -> list[str]:
        out = [f"kernel verity error: {e.describe()}" for e in self.verity_errors]
        out += [f"required unit failed: {u.describe()}" for u in self.failed_units]
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "deployment": self.deployment,
            "healthy": self.healthy,
            "verity_errors": [{"message": e.message, "device": e.device, "inode": e.inode,
                               "object": e.object, "path": e.path, "count": e.count}
                              for e in self.verity_errors],
            "required_units": self.required_units,
            "failed_units": [{"name": u.name, "load_state": u.load_state, "active_state": u.active_state,
                              "result": u.result} for u in self.failed_units],
        }


# -- the kernel log ------------------------------------------------------------------------------

def read_kmsg(path: str = KMSG) -> list[str]:
    """The messages of the kernel's log buffer (this boot's), one per record, without the
    ``prio,seq,time,flags;`` prefix.  A plain file in the same format works too (tests)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    records: list[bytes] = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except OSError as err:
                if err.errno == errno.EAGAIN:
                    break  # the end of the buffer
                if err.errno == errno.EPIPE:
                    continue  # overwritten while we read: the next record follows
                raise
            if not record:
                break
            records.append(record)
    finally:
        os.close(fd)
    lines: list[str] = []
    for record in (b"".join(records).split(b"\n") if len(records) == 1 else records):
        text = record.decode(errors="replace").rstrip("\n")
        if not text or text.startswith(" "):  # continuation lines (" KEY=value") carry no message
            continue
        _prefix, sep, message = text.partition(";")
        lines.append(message if sep else text)
    return lines


def verity_errors(lines: Iterable[str]) -> list[VerityError]:
    """The kernel messages among ``lines`` that say sealed bytes were refused, one per file
    (fs-verity: per device and inode; overlayfs: per message), counted, in order."""
    found: dict[tuple[str | None, int | None, str], VerityError] = {}
    for line in lines:
        match = _FSVERITY.search(line)
        if match is not None:
            if not any(word in match["msg"] for word in _FSVERITY_BAD):
                continue
            error = VerityError(match["msg"].strip(), match["dev"], int(match["ino"]))
            key: tuple[str | None, int | None, str] = (error.device, error.inode, "")
        else:
            over = _OVERLAY.search(line)
            if over is None:
                continue
            error = VerityError("overlayfs: " + over["msg"].strip())
            key = (None, None, error.message)
        known = found.get(key)
        found[key] = error if known is None else dataclasses.replace(known, count=known.count + 1)
    return list(found.values())


def locate(errors: Sequence[VerityError], objects_dir: str, farm: str | None) -> list[VerityError]:
    """``errors`` with the object and the tree path of each inode filled in where found: among
    the files under ``objects_dir`` and ``farm`` (the booted deployment's hardlink farm)."""
    wanted = {e.inode for e in errors if e.inode is not None}
    if not wanted:
        return list(errors)
    objects = _by_inode(objects_dir, wanted)
    paths = _by_inode(farm, wanted) if farm is not None else {}
    out: list[VerityError] = []
    for e in errors:
        if e.inode is None:
            out.append(e)
            continue
        obj = objects.get(e.inode)
        path = paths.get(e.inode)
        out.append(dataclasses.replace(e, object=obj, path="/" + path if path is not None else None))
    return out


def _by_inode(top: str, inodes: set[int]) -> dict[int, str]:
    """Inode -> path relative to ``top`` of the regular files under ``top`` that have one of
    ``inodes`` (on the filesystem of ``top``)."""
    found: dict[int, str] = {}
    try:
        dev = os.stat(top).st_dev
    except OSError:
        return found
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if st.st_ino in inodes and st.st_dev == dev and st.st_ino not in found:
                found[st.st_ino] = os.path.relpath(full, top)
        if len(found) == len(inodes):
            break
    return found


# -- required units -------------------------------------------------------------------------------

def read_required_units(path: str = REQUIRED_UNITS) -> list[str]:
    """The unit names listed in ``path`` (none when it does not exist); UsageError naming the
    file and line for a word that is not a unit name."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read the required units: {err}", path=path) from None
    units: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not _UNIT_NAME.match(line):
            raise UsageError(f"line {number}: not a unit name: {line!r}", path=path)
        units.append(line)
    return units


def parse_systemctl_show(text: str) -> list[UnitState]:
    """``systemctl show -p Id -p LoadState -p ActiveState -p Result UNIT...`` output: one block
    of ``Key=value`` lines per unit, blocks separated by an empty line."""
    states: list[UnitState] = []
    for block in text.strip().split("\n\n"):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" not in values:
            continue
        states.append(UnitState(values["Id"], values.get("LoadState", ""), values.get("ActiveState", ""),
                                values.get("Result", "")))
    return states


def unit_states(units: Sequence[str]) -> list[UnitState]:
    """Ask systemd about ``units`` (``systemctl show``).  UsageError when it cannot answer."""
    if not units:
        return []
    cmd = ["systemctl", "show", "-p", "Id", "-p", "LoadState", "-p", "ActiveState", "-p", "Result",
           "--", *units]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UsageError(f"cannot ask systemd about the required units: {err}", path="systemctl") from None
    if done.returncode != 0:
        raise UsageError(f"systemctl show failed: {done.stderr.strip()}", path="systemctl")
    states = parse_systemctl_show(done.stdout)
    # systemctl shows a unit it cannot find with its Id as asked (LoadState=not-found); a
    # unit missing from the answer altogether counts as not found too.
    seen = {s.name for s in states}
    states += [UnitState(u, "not-found", "inactive", "unknown") for u in units if u not in seen]
    return states


# -- together -------------------------------------------------------------------------------------

def booted_deployment(path: str = BOOTED) -> str | None:
    """The deployment the verifier booted (its ``/run/sealtree/booted``), None when not booted
    through sealtree."""
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip() or None
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def assess(*, deployment: str | None, kernel_lines: Iterable[str], objects_dir: str,
           farm: str | None, required: Sequence[str], states: Sequence[UnitState]) -> Health:
    """The health of this boot from what was read (the pure part of ``sealtree boot-check``)."""
    errors = locate(verity_errors(kernel_lines), objects_dir, farm)
    failed = [s for s in states if s.failed]
    return Health(deployment, errors, failed, list(required))
