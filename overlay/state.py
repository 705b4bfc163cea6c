"""Deployment state: which deployments exist, the default, the previous one, boot counting.

One small JSON file, ``<repo>/deploy/state.json``, replaced atomically
(``store.atomic.atomic_write``) under an exclusive flock on
``<repo>/deploy/state.lock`` (``overlay.layout``); the format is in
docs/FORMAT.md, section 9 (``deploy/state.json``).  A file that does not parse
is an error, never an empty state (that would lose the default and the boot
counters).  Nothing in it is trusted for verification: the keyring a
deployment was made with is recorded for information only.

Boot counting (used by the boot verifier, which imports this module):
``choose_deployment_for_boot`` picks the default unless its tries are used up,
in which case the previous one; ``count_try`` spends one try of the chosen
deployment and remembers it as ``booted``; ``mark_good`` (run once the system
is up) ends the counting for the booted deployment.  ``tries_left`` is None
for a deployment that is not being counted (known good).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from typing import cast

from store.atomic import atomic_write
from store.errors import DeployError, FormatError
from store.lock import flock
from store.names import show
from store.record import Frozen, Mutable
from store.repo import Repository

from .boot_files import point_default
from .layout import DeployLayout, deploy_layout

FORMAT = "sealtree-deployments"
VERSION = 2  # 2 added each deployment's "layout"; a version 1 file's are all "hardlinks"
SUPPORTED_VERSIONS = (1, 2)
LAYOUTS = ("hardlinks", "metacopy")  # overlay.metacopy.Layout, less "auto" (always resolved)
MAX_STATE = 4 << 20  # bytes: a few thousand deployments at most
MAX_TRIES = 1000
DEFAULT_TRIES = 3  # boot tries a new default gets unless the caller says otherwise
# A serial has at most 18 digits (ID_RE), so the last one is MAX_SERIAL and next_serial
# never exceeds MAX_SERIAL + 1: a state that says more was not written by sealtree.
MAX_SERIAL = 10**18 - 1

ID_RE = re.compile(r"([0-9a-f]{64})\.([1-9][0-9]{0,17})")
_KEYS = {"format", "version", "next_serial", "default", "previous", "booted", "deployments"}
_DEPLOYMENT_KEYS_V1 = {"id", "commit", "ref", "version", "created", "pack", "pack_sha256", "keys",
                       "tries_left", "mounted_at"}
_DEPLOYMENT_KEYS = _DEPLOYMENT_KEYS_V1 | {"layout"}


class NoSuchDeployment(DeployError):
    """A deployment id (or default/previous/booted) names no deployment of the state."""


class DeploymentInUse(DeployError):
    """A deployment cannot be removed: it is mounted, or it is the default."""


class Deployment(Mutable):
    """One deployment: ``deploy/<id>/`` built from ``pack`` (relative to the repository).

    ``id`` is what the code calls ``dep_id`` everywhere else."""

    __slots__ = ("id", "commit", "ref", "version", "created", "pack", "pack_sha256", "keys",
                 "tries_left", "mounted_at", "layout")
    _fields = __slots__

    def __init__(self, id: str, commit: str, ref: str, version: str, created: int, pack: str,
                 pack_sha256: str, keys: str, tries_left: int | None = None,
                 mounted_at: list[str] | None = None, layout: str = "hardlinks") -> None:
        self.id = id
        self.commit = commit  # hex commit id
        self.ref = ref
        self.version = version
        self.created = created  # seconds since the epoch
        self.pack = pack  # the pack it was verified from, relative to the repository
        self.pack_sha256 = pack_sha256  # hex SHA-256 of that pack when it was deployed
        # The keyring directory it was verified with (absolute): information only, never used
        # to verify (the state file is as writable as the packs; see overlay.layout).
        self.keys = keys
        self.tries_left = tries_left  # None: not counting boots (known good)
        self.mounted_at: list[str] = [] if mounted_at is None else mounted_at
        # "hardlinks" (a farm under deploy/<id>/) or "metacopy" (no farm: stubs redirected
        # into objects/ at each mount); what ``auto`` resolved to at deploy time.
        self.layout = layout


class State(Mutable):
    __slots__ = ("deployments", "default", "previous", "booted", "next_serial")
    _fields = __slots__

    def __init__(self, deployments: list[Deployment] | None = None, default: str | None = None,
                 previous: str | None = None, booted: str | None = None,
                 next_serial: int = 1) -> None:
        self.deployments: list[Deployment] = [] if deployments is None else deployments
        self.default = default
        self.previous = previous
        self.booted = booted  # the deployment chosen at the last counted boot
        self.next_serial = next_serial

    # -- lookups ------------------------------------------------------------------------
    def get(self, dep_id: str) -> Deployment:
        for dep in self.deployments:
            if dep.id == dep_id:
                return dep
        raise NoSuchDeployment("no such deployment", path=dep_id)

    def find(self, dep_id: str) -> Deployment:
        """A deployment by id, ``<commit prefix>[.<serial>]`` if unique, or
        ``default``/``previous``/``booted``."""
        if dep_id in ("default", "previous", "booted"):
            named = getattr(self, dep_id)
            if named is None:
                raise NoSuchDeployment(f"there is no {dep_id} deployment")
            return self.get(named)
        exact = [d for d in self.deployments if d.id == dep_id]
        if exact:
            return exact[0]
        prefix, dot, serial = dep_id.partition(".")
        matches = []
        if len(prefix) >= 4:
            matches = [d for d in self.deployments if d.commit.startswith(prefix)
                       and (not dot or d.id.rsplit(".", 1)[1] == serial)]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(d.id[:12] + "." + d.id.rsplit(".", 1)[1] for d in self.deployments) or "none"
        reason = "ambiguous" if matches else "no such deployment"
        raise NoSuchDeployment(f"{reason} (deployments: {known})", path=dep_id)

    # -- changes ------------------------------------------------------------------------
    def allocate_id(self, commit_hex: str) -> str:
        if self.next_serial > MAX_SERIAL:
            raise DeployError(f"every deployment serial up to {MAX_SERIAL} is used")
        dep_id = f"{commit_hex}.{self.next_serial}"
        self.next_serial += 1
        return dep_id

    def add(self, dep: Deployment, *, make_default: bool, tries: int | None) -> None:
        self.deployments.append(dep)
        if make_default:
            self.set_default(dep.id, tries)

    def set_default(self, dep_id: str, tries: int | None) -> None:
        """Make ``dep_id`` the default; the old default becomes the previous one.

        ``tries`` starts boot counting for it (None: not counted)."""
        dep = self.get(dep_id)
        check_tries(tries)
        if self.default != dep_id:
            self.previous = self.default
            self.default = dep_id
        dep.tries_left = tries

    def rollback(self) -> None:
        """Make the previous deployment the default (and the default the previous)."""
        if self.previous is None:
            raise DeployError("no previous deployment to roll back to")
        self.default, self.previous = self.previous, self.default

    def remove(self, dep_id: str) -> Deployment:
        dep = self.get(dep_id)
        if dep.mounted_at:
            where = ", ".join(show(m) for m in dep.mounted_at)
            raise DeploymentInUse(f"is mounted at {where}; unmount it first", path=dep_id)
        if self.default == dep_id:
            raise DeploymentInUse("is the default; make another one the default before "
                                  "removing it", path=dep_id)
        self.deployments.remove(dep)
        if self.previous == dep_id:
            self.previous = None
        if self.booted == dep_id:
            self.booted = None
        return dep

    # -- encoding -----------------------------------------------------------------------
    def encode(self) -> bytes:
        doc = {"format": FORMAT, "version": VERSION, "next_serial": self.next_serial,
               "default": self.default, "previous": self.previous, "booted": self.booted,
               "deployments": [d.as_dict() for d in self.deployments]}
        return (json.dumps(doc, indent=1, sort_keys=False) + "\n").encode()


# -- boot counting ----------------------------------------------------------------------------

class BootChoice(Frozen):
    __slots__ = ("deployment", "reason")
    _fields = __slots__
    deployment: Deployment
    reason: str  # "default", "fallback" (default out of tries), "exhausted" (nothing else to boot)

    def __init__(self, deployment: Deployment, reason: str) -> None:
        self._set_fields(deployment, reason)


def choose_deployment_for_boot(state: State) -> BootChoice:
    """The deployment to boot: the default, unless it has no tries left and a previous exists."""
    if state.default is None:
        raise DeployError("no default deployment to boot")
    default = state.get(state.default)
    if default.tries_left is None or default.tries_left > 0:
        return BootChoice(default, "default")
    if state.previous is not None:
        return BootChoice(state.get(state.previous), "fallback")
    return BootChoice(default, "exhausted")


def count_try(state: State, dep_id: str) -> None:
    """Spend one boot try of ``dep_id`` (if it is being counted) and remember it as booted."""
    dep = state.get(dep_id)
    if dep.tries_left is not None and dep.tries_left > 0:
        dep.tries_left -= 1
    state.booted = dep_id


def mark_good(state: State, dep_id: str | None = None) -> Deployment:
    """End boot counting for ``dep_id`` (default: the booted one, else the default)."""
    dep_id = dep_id or state.booted or state.default
    if dep_id is None:
        raise DeployError("no deployment to mark good")
    dep = state.get(dep_id)
    dep.tries_left = None
    return dep


# -- the file ---------------------------------------------------------------------------------

class StateFile:
    """The state file of one repository; ``update()`` is the only way to change it."""

    def __init__(self, deploy_root: str) -> None:
        layout = DeployLayout(deploy_root)
        self.root = deploy_root
        self.path = layout.state
        self.lock_path = layout.state_lock

    def read(self) -> State:
        """The current state (an empty one when the file does not exist yet)."""
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(MAX_STATE + 1)
        except FileNotFoundError:
            return State()
        if len(data) > MAX_STATE:
            raise FormatError(f"larger than {MAX_STATE} bytes", path=self.path)
        return decode(data, self.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        os.makedirs(self.root, exist_ok=True)
        with flock(self.lock_path, exclusive=True):
            yield

    @contextlib.contextmanager
    def update(self) -> Iterator[State]:
        """Lock, read, let the block change the state, write it back atomically (if it changed)."""
        with self.locked():
            state = self.read()
            before = state.encode()
            yield state
            _check_serial(state.next_serial, self.path)  # never write what read() refuses
            after = state.encode()
            if after != before:
                atomic_write(self.path, after)
                # The boot loader's pointer follows the default; best effort: the state is
                # written, and the next change of the state sets it right.
                with contextlib.suppress(OSError):
                    point_default(DeployLayout(self.root), state.default)


def state_file(repo: Repository) -> StateFile:
    """The state file of ``repo``'s deployments."""
    return StateFile(deploy_layout(repo).root)


def boot_select(states: StateFile) -> BootChoice:
    """What the boot verifier calls: choose, spend one try, persist; return the choice."""
    with states.update() as state:
        choice = choose_deployment_for_boot(state)
        count_try(state, choice.deployment.id)
    return choice


# -- decoding -----------------------------------------------------------------------------------

def check_tries(tries: int | None) -> None:
    """Refuse a boot-try count out of 0..MAX_TRIES (None: not counting)."""
    if tries is not None and not 0 <= tries <= MAX_TRIES:
        raise DeployError(f"boot tries must be in 0..{MAX_TRIES}, got {tries}")


def _check_serial(next_serial: int, where: str) -> None:
    if not 1 <= next_serial <= MAX_SERIAL + 1:
        raise FormatError(f"next_serial must be in 1..{MAX_SERIAL + 1}, got "
                          f"{_short(next_serial)}", path=where)


def _short(value: object) -> str:
    """A value for a message, cut short: a hostile file may hold a huge one."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Huge(str):
    """A number too long to be any field's value, kept as its text for the message."""


def _bounded_int(text: str) -> int | _Huge:
    """JSON integers of up to 30 digits; a longer one is never a valid field, and Python
    would refuse to convert one of 4,301 digits or more."""
    return int(text) if len(text.lstrip("-")) <= 30 else _Huge(text)


def _fail(where: str, message: str, item: str = "") -> FormatError:
    return FormatError(f"{item}: {message}" if item else message, path=where)


def _typed(doc: dict[str, object], key: str, kinds: tuple[type, ...], where: str,
           item: str = "") -> object:
    value = doc.get(key)
    if not isinstance(value, kinds) or isinstance(value, bool):
        names = "/".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise _fail(where, f"{json.dumps(key)} must be {names}, got {_short(value)}", item)
    return value


def decode(data: bytes, where: str = "deployment state") -> State:
    """Parse and check a state file: format, version, fields, ids, references.

    Every error is a FormatError whose ``path`` is ``where`` (the state file)."""
    try:
        doc = json.loads(data.decode("utf-8"), parse_int=_bounded_int)
    except ValueError as err:  # not UTF-8, not JSON, or a number past Python's digit limit
        raise _fail(where, f"not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise _fail(where, "not a JSON object")
    if doc.get("format") != FORMAT:
        raise _fail(where, f"format must be {json.dumps(FORMAT)}, got {_short(doc.get('format'))}")
    if doc.get("version") not in SUPPORTED_VERSIONS:
        raise _fail(where, f"unsupported version: expected one of {SUPPORTED_VERSIONS}, "
                           f"got {_short(doc.get('version'))}")
    if set(doc) != _KEYS:
        raise _fail(where, f"keys must be {sorted(_KEYS)}, got {sorted(doc)}")
    next_serial = cast(int, _typed(doc, "next_serial", (int,), where))
    _check_serial(next_serial, where)
    deployments = _typed(doc, "deployments", (list,), where)
    state = State(next_serial=next_serial)
    seen: set[str] = set()
    item: object
    want = _DEPLOYMENT_KEYS if doc["version"] >= 2 else _DEPLOYMENT_KEYS_V1
    for i, item in enumerate(cast(list[object], deployments)):
        at = f"deployments[{i}]"
        if not isinstance(item, dict) or set(item) != want:
            raise _fail(where, f"must be an object with keys {sorted(want)}", at)
        for key in ("id", "commit", "ref", "version", "pack", "pack_sha256", "keys"):
            _typed(item, key, (str,), where, at)
        if "layout" in item and item["layout"] not in LAYOUTS:
            raise _fail(where, f"layout must be one of {', '.join(LAYOUTS)}, got "
                               f"{_short(item['layout'])}", at)
        _typed(item, "created", (int,), where, at)
        tries = _typed(item, "tries_left", (int, type(None)), where, at)
        mounted = _typed(item, "mounted_at", (list,), where, at)
        match = ID_RE.fullmatch(item["id"])
        if not match or match.group(1) != item["commit"]:
            raise _fail(where, f"id {_short(item['id'])} is not <commit>.<serial> of commit "
                               f"{_short(item['commit'])}", at)
        if int(match.group(2)) >= state.next_serial:
            raise _fail(where, f"serial of {item['id']} is not below next_serial "
                               f"{state.next_serial}", at)
        if item["id"] in seen:
            raise _fail(where, f"duplicate id {item['id']}", at)
        if tries is not None and not 0 <= tries <= MAX_TRIES:  # type: ignore[operator]
            raise _fail(where, f"tries_left {_short(tries)} out of 0..{MAX_TRIES}", at)
        if not all(isinstance(m, str) for m in mounted):  # type: ignore[attr-defined]
            raise _fail(where, "mounted_at must be a list of paths", at)
        seen.add(item["id"])
        state.deployments.append(Deployment(**item))
    for key in ("default", "previous", "booted"):
        value = _typed(doc, key, (str, type(None)), where)
        if value is not None and value not in seen:
            raise _fail(where, f"{key} {_short(value)} is not a listed deployment")
        setattr(state, key, value)
    return state
