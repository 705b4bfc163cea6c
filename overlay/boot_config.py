"""The boot verifier's configuration and who may set what (docs/FORMAT.md, section 10).

In increasing precedence: built-in defaults, the initramfs's config file
(``/etc/sealtree/boot.conf``), the kernel command line (``sealtree.<key>=``),
then the verifier's own options.  The keyring, the freshness floor and
whether boots are counted come only from the initramfs (the config file or
the options its scripts pass): a kernel command line can be edited at the
boot loader, so it may only *tighten* the verification policy unless the
config says ``cmdline_verify = yes``.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import TypeVar

from store.errors import UsageError
from store.names import show

from .layout import SYSTEM_KEYRING
from .metacopy import Layout
from .objcheck import Policy

Choice = TypeVar("Choice", bound=Enum)

CONFIG_PATH = "/etc/sealtree/boot.conf"
CMDLINE_PATH = "/proc/cmdline"

Say = Callable[[str], None]


class BootConfigError(UsageError):
    """The boot configuration (file, kernel command line or options) is wrong."""


@dataclass(frozen=True)
class BootConfig:
    """Everything the verifier needs to know; docs/FORMAT.md, section 10, has each key."""

    root: str | None = None  # block device of the sysroot; None: the sysroot is mounted already
    rootfstype: str = "ext4"
    rootwait: float = 10.0  # seconds to wait for the root device to appear
    sysroot: str = "/sysroot"  # where the sysroot is (or gets) mounted
    repo: str = "/sealtree/repo"  # the repository, inside the sysroot
    keys: str = SYSTEM_KEYRING  # the trusted keyring, inside the initramfs
    target: str = "/newroot"  # where the deployment is mounted for the handover
    verify: Policy = Policy.KERNEL
    cmdline_verify: bool = False  # may sealtree.verify= choose a policy other than kernel?
    freshness: str | None = None  # the floor file inside the initramfs; None: no floor
    count: bool = True  # count boot tries (needs the sysroot writable)
    # Boot exactly this dep_id (id, prefix, default, previous); the key keeps its
    # name: it is ``sealtree.deployment=`` on kernel command lines already written.
    deployment: str | None = None
    scratch: str = "/run/sealtree"  # staging mounts; gets the ``booted`` file
    # hardlinks (the farm), metacopy (stubs, verity=require), auto (metacopy where the
    # kernel and the sysroot have overlay verity and fs-verity); initramfs only.
    layout: Layout = Layout.AUTO
    # First-boot sealing: enable fs-verity on the large objects the verified pack names
    # before they are measured (a disk written where fs-verity could not be enabled).
    seal: bool = False
    # Live mode: the deployment's overlay gets a tmpfs upper layer and no persistent state
    # (no writable /etc, /var bind mounts): nothing written survives the boot.
    live: bool = False

    @property
    def repo_path(self) -> str:
        return os.path.join(self.sysroot, self.repo.lstrip("/"))


# -- parsing the configuration ---------------------------------------------------------------

def _path(value: str, key: str) -> str:
    if not value.startswith("/") or "\0" in value:
        raise BootConfigError(f"must be an absolute path, got '{show(value)}'", path=key)
    if ".." in value.split("/"):
        raise BootConfigError(f"must not contain '..', got '{show(value)}'", path=key)
    return os.path.normpath(value)


def _optional_path(value: str, key: str) -> str | None:
    return None if value.lower() in ("", "none") else _path(value, key)


def _bool(value: str, key: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true", "1", "on"):
        return True
    if lowered in ("no", "false", "0", "off"):
        return False
    raise BootConfigError(f"expected yes or no, got '{show(value)}'", path=key)


def _choice(kind: type[Choice]) -> Callable[[str, str], Choice]:
    """A parser for a key whose value is one of the enum ``kind``'s values."""
    def parse(value: str, key: str) -> Choice:
        try:
            return kind(value.lower())
        except ValueError:
            raise BootConfigError(f"expected one of {', '.join(c.value for c in kind)}, "
                                  f"got '{show(value)}'", path=key) from None
    return parse


def _seconds(value: str, key: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise BootConfigError(f"expected seconds in 0..3600, got '{show(value)}'", path=key)
    return seconds


def _text(value: str, key: str) -> str:
    if not value or "\0" in value:
        raise BootConfigError("must not be empty", path=key)
    return value


def _optional_text(value: str, key: str) -> str | None:
    return None if value.lower() in ("", "none") else _text(value, key)


_PARSERS: dict[str, Callable[[str, str], object]] = {
    "root": _optional_path, "rootfstype": _text, "rootwait": _seconds, "sysroot": _path,
    "repo": _path, "keys": _path, "target": _path, "verify": _choice(Policy), "cmdline_verify": _bool,
    "freshness": _optional_path, "count": _bool, "deployment": _optional_text, "scratch": _path,
    "layout": _choice(Layout),
    "seal": _bool, "live": _bool,
}
# What a kernel command line may set (``sealtree.<key>=``).  Not the keyring, the
# freshness floor, boot counting or the paths the initramfs scripts rely on.
# ``live`` may: it only keeps this boot's writes from persisting.
CMDLINE_KEYS = ("root", "rootfstype", "rootwait", "sysroot", "repo", "deployment", "verify",
                "live")


def parse_config_text(text: str, where: str, base: BootConfig | None = None) -> BootConfig:
    """Apply ``key = value`` lines (``#`` comments) to ``base``; unknown keys are errors."""
    config = base or BootConfig()
    changes: dict[str, object] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in _PARSERS:
            raise BootConfigError(f"line {number}: expected 'key = value' with a key of "
                                  f"{', '.join(sorted(_PARSERS))}, got '{show(raw.strip())}'",
                                  path=where)
        try:
            changes[key] = _PARSERS[key](value, key)
        except BootConfigError as err:
            raise BootConfigError(f"line {number}: {err}", path=where) from None
    return replace(config, **changes)  # type: ignore[arg-type]


def load_config_file(path: str, base: BootConfig | None = None) -> BootConfig:
    """``parse_config_text`` of the file at ``path``; a missing file changes nothing."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(1 << 16)
    except FileNotFoundError:
        return base or BootConfig()
    except OSError as err:
        raise BootConfigError(f"cannot read: {err.strerror}", path=path) from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BootConfigError("not UTF-8", path=path) from err
    return parse_config_text(text, path, base)


def apply_cmdline(config: BootConfig, cmdline: str, say: Say) -> BootConfig:
    """Apply the ``sealtree.<key>=`` parameters of a kernel command line (later ones win).

    Keys the command line may not set are ignored with a console line;
    ``sealtree.verify=`` other than ``kernel`` is ignored unless the config
    allows it (``cmdline_verify = yes``).  Malformed values are errors.
    """
    try:
        words = shlex.split(cmdline)
    except ValueError:
        words = cmdline.split()
    changes: dict[str, object] = {}
    for word in words:
        name, sep, value = word.partition("=")
        if not name.startswith("sealtree.") or not sep:
            continue
        key = name.removeprefix("sealtree.")
        if key not in CMDLINE_KEYS:
            reason = "only the initramfs configuration sets it" if key in _PARSERS else "unknown key"
            say(f"ignoring {show(name)}= on the kernel command line: {reason}")
            continue
        try:
            parsed = _PARSERS[key](value, name)
        except BootConfigError as err:
            raise BootConfigError(f"on the kernel command line: {err.detail()}",
                                  path=err.path) from None
        if key == "verify" and parsed is not Policy.KERNEL and not config.cmdline_verify:
            say(f"ignoring {show(name)}={show(value)}: the initramfs configuration requires fs-verity "
                f"measured by the kernel (set cmdline_verify = yes to allow this)")
            continue
        changes[key] = parsed
    return replace(config, **changes)  # type: ignore[arg-type]


def _read_cmdline(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(1 << 16)
    except FileNotFoundError:
        return ""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sealtree-boot",
        description="Verify a sealtree deployment and mount it read-only at the new root "
                    "(run from an initramfs).  Options override the kernel command line, "
                    "which overrides the config file.",
        epilog="sealtree-boot write-floor REPO FILE: write the freshness floor for an initramfs.")
    p.add_argument("--config", default=CONFIG_PATH, metavar="FILE",
                   help=f"the configuration file (default {CONFIG_PATH}; missing: defaults)")
    p.add_argument("--cmdline", default=CMDLINE_PATH, metavar="FILE",
                   help=f"the kernel command line ('none' to ignore it; default {CMDLINE_PATH})")
    for key in ("root", "sysroot", "repo", "keys", "target", "freshness", "deployment", "scratch"):
        p.add_argument(f"--{key}", metavar="VALUE", help=f"sets '{key}'")
    p.add_argument("--verify", choices=[x.value for x in Policy], help="sets 'verify'")
    p.add_argument("--no-count", action="store_true", help="do not count a boot try")
    p.add_argument("--live", action="store_true", dest="live_flag",
                   help="live mode: writes in memory only, no persistent /etc or /var")
    return p


def config_from_args(argv: Sequence[str], say: Say) -> BootConfig:
    args = _parser().parse_args(argv)
    config = load_config_file(args.config)
    if args.cmdline != "none":
        config = apply_cmdline(config, _read_cmdline(args.cmdline), say)
    known = {f.name for f in fields(BootConfig)}
    changes: dict[str, object] = {key: _PARSERS[key](value, f"--{key}")
                                  for key, value in vars(args).items()
                                  if key in known and value is not None}
    if args.no_count:
        changes["count"] = False
    if args.live_flag:
        changes["live"] = True
    return replace(config, **changes)  # type: ignore[arg-type]


