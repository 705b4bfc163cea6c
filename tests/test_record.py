"""store.record classes behave as the dataclasses they replaced: equality by fields, hashing
and refused assignment when frozen, repr, pickling, defaults (fresh containers per
instance), ``replace`` and ``as_dict``; and the deploy path's value modules import no
``dataclasses``."""

import json
import os
import pickle
import subprocess
import sys

import pytest

from overlay.deploy_state import EtcReport
from overlay.etc_merge import Conflict
from overlay.objcheck import KERNEL, CheckReport, LargeFile, Verity
from overlay.state import BootChoice, Deployment, State
from overlay.writable import StateMounts
from pack.manifest import ManifestEntry
from store.ids import RawId
from store.model import Entry, Kind, Meta
from store.record import Frozen

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META = Meta(0o644, 0, 0, ())
FILE = Entry(b"f", Kind.FILE, META, 3, RawId(b"\1" * 32))


def _deployment(**changes: object) -> Deployment:
    fields = dict(id="ab" * 32 + ".1", commit="ab" * 32, ref="os/main", version="1", created=5,
                  pack="packs/x.pack", pack_sha256="cd" * 32, keys="/etc/sealtree/keys")
    return Deployment(**(fields | changes))  # type: ignore[arg-type]


def test_a_frozen_record_compares_hashes_and_refuses_changes():
    row = ManifestEntry(b"a/f", FILE, True, 7)
    same = ManifestEntry(b"a/f", FILE, True, 7)
    assert row == same and hash(row) == hash(same) and len({row, same}) == 1
    assert row != ManifestEntry(b"a/f", FILE, True, 8)
    assert row != ManifestEntry(b"a/f", FILE)  # the defaults: not inline, offset 0
    assert ManifestEntry(b"a/f", FILE).inline is False and ManifestEntry(b"a/f", FILE).offset == 0
    # another class with the same fields is not equal (as dataclasses)
    assert Conflict(b"x", "added", "added") != ("x", "added", "added")
    for obj, name in ((row, "offset"), (Conflict(b"x", "added", "removed"), "user")):
        with pytest.raises(AttributeError, match="cannot assign"):
            setattr(obj, name, 1)
        with pytest.raises(AttributeError, match="cannot delete"):
            delattr(obj, name)
    assert isinstance(row, Frozen)


def test_a_mutable_record_changes_and_is_not_hashable():
    report = CheckReport(files=2)
    report.userspace += 1
    assert report == CheckReport(2, 0, 0, 1, 0)
    with pytest.raises(TypeError):
        hash(report)
    dep = _deployment()
    dep.tries_left = 2
    assert dep.tries_left == 2 and dep != _deployment()


def test_each_instance_gets_its_own_default_containers():
    a, b = _deployment(), _deployment()
    a.mounted_at.append("/mnt")
    assert b.mounted_at == [] and State().deployments is not State().deployments
    report = EtcReport("copied")
    report.kept.append("/etc/x")
    assert EtcReport("copied").kept == [] and EtcReport("copied").conflicts == []
    first, second = StateMounts(), StateMounts()
    first.created.append("etc")
    assert second.created == [] and first.stack is not second.stack
    assert KERNEL == Verity()  # the default operations are the kernel's


def test_repr_names_the_class_and_every_field():
    assert repr(ManifestEntry(b"a", FILE)) == (f"ManifestEntry(path=b'a', entry={FILE!r}, inline=False, "
                                               "offset=0)")
    assert repr(BootChoice(_deployment(), "default")).startswith(
        "BootChoice(deployment=Deployment(id='abab")
    assert repr(CheckReport()) == "CheckReport(files=0, bytes=0, kernel=0, userspace=0, enabled=0)"


def test_records_survive_pickling():
    """LargeFile goes to the checking workers and the reports come back pickled."""
    item = LargeFile(b"a/f", META, 3, RawId(b"\1" * 32), "/objects/x", None)
    for obj in (item, CheckReport(1, 2, 3, 4, 5), _deployment(mounted_at=["/m"])):
        copy = pickle.loads(pickle.dumps(obj))
        assert copy == obj and type(copy) is type(obj)


def test_replace_and_as_dict():
    item = LargeFile(b"a/f", META, 3, RawId(b"\1" * 32), "/objects/x")
    linked = item.replace(link="/farm/a/f")
    assert linked.link == "/farm/a/f" and item.link is None and linked.replace(link=None) == item
    dep = _deployment(tries_left=3)
    assert list(dep.as_dict()) == ["id", "commit", "ref", "version", "created", "pack",
                                   "pack_sha256", "keys", "tries_left", "mounted_at", "layout"]
    assert dep.replace(created=9) == _deployment(tries_left=3, created=9)
    with pytest.raises(TypeError):
        dep.replace(no_such_field=1)


def test_the_state_file_keeps_its_keys_in_order():
    """What ``dataclasses.asdict`` wrote: the deployments' keys in field order."""
    state = State()
    state.add(_deployment(), make_default=True, tries=3)
    doc = json.loads(state.encode())
    assert list(doc["deployments"][0]) == list(_deployment().as_dict())
    assert doc["deployments"][0]["tries_left"] == 3 and doc["deployments"][0]["mounted_at"] == []
    assert doc["default"] == _deployment().id


def test_the_deploy_path_imports_no_dataclasses():
    """Importing ``dataclasses`` (and the inspect, ast, dis and tokenize it imports) and the code
    it compiles per class is start-up time of every deploy, mount and import."""
    modules = ("sealtree.cli", "overlay.deploy", "overlay.mount_deployment", "pack.importer",
               "pack.image", "store.erofs")
    code = f"import sys; import {', '.join(modules)}; print('dataclasses' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
