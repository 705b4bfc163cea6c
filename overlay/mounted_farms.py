"""Which deployments are mounted right now, read from /proc/self/mountinfo.

A deployment's overlay in the hardlinks layout has the deployment's farm,
``<repo>/deploy/<id>``, as its lowest layer (``mount_deployment``); in the
metacopy layout its data-only layer is ``<repo>/objects`` and its one lower
layer, the staging tmpfs, is named ``<id>`` (``staging``).  Those layers, not a
record in the state file, tell which deployment a mount shows: it stays right after a crash
between mounting and recording, after an unmount behind sealtree's back, and
for a mount point moved or renamed since.  Undeploying, unmounting and
``status`` go by it.
"""

from __future__ import annotations

import os

from store import layout as store_layout
from store.record import Frozen

from . import mounts
from .state import ID_RE


class DeploymentMount(Frozen):
    __slots__ = ("mount_point", "farm_parent", "dep_id")
    _fields = __slots__
    mount_point: str
    farm_parent: str  # ``<repo>/deploy``, as the layers given when mounting name it
    dep_id: str

    def __init__(self, mount_point: str, farm_parent: str, dep_id: str) -> None:
        self._set_fields(mount_point, farm_parent, dep_id)


def deployment_mount(info: mounts.MountInfo) -> DeploymentMount | None:
    """The deployment an overlay mount shows, or None if it is not a deployment's overlay."""
    if info.fstype != "overlay":
        return None
    layers, data = mounts.overlay_layers(info)
    if data:  # metacopy: <scratch>/mount-*/<id> over the data-only layer <repo>/objects
        repo, objects = os.path.split(os.fsdecode(data[-1]))
        name = os.path.basename(os.fsdecode(layers[0])) if len(layers) == 1 else ""
        if objects != store_layout.OBJECTS or not ID_RE.fullmatch(name):
            return None
        return DeploymentMount(os.fsdecode(info.mount_point),
                               os.path.join(repo, store_layout.DEPLOY), name)
    if len(layers) < 2:  # a hardlinks deployment's overlay is the unpacked pack over the farm
        return None
    parent, name = os.path.split(os.fsdecode(layers[-1]))
    if not ID_RE.fullmatch(name):
        return None
    return DeploymentMount(os.fsdecode(info.mount_point), parent, name)


def same_directory(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def deployment_mounts(deploy_root: str) -> dict[str, list[str]]:
    """Deployment id -> mount points of the overlays showing it, for the deployments under
    ``deploy_root`` (``<repo>/deploy``); in mount order.

    An overlay counts when its farm is in ``deploy_root``, and also when its
    farm's directory does not exist here: it was mounted from another view of
    the filesystem (the boot verifier mounts the root from the initramfs,
    through ``/sysroot``), so only the id tells.  Erring that way only keeps
    a deployment that is in use.
    """
    found: dict[str, list[str]] = {}
    for info in mounts.mountinfo():
        shown = deployment_mount(info)
        if shown is None:
            continue
        if same_directory(shown.farm_parent, deploy_root) or not os.path.isdir(shown.farm_parent):
            found.setdefault(shown.dep_id, []).append(shown.mount_point)
    return found
