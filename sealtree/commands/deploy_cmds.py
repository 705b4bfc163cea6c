"""deploy, mount, umount, status, undeploy, set-default, rollback, mark-good: deployments.

``overlay`` is imported inside each command (but for the state file's limits,
which the options show), so that other commands do not pay for loading it.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from overlay.state import DEFAULT_TRIES, MAX_TRIES
from store.errors import UsageError
from store.names import show

from ..output import print_json
from .common import add_parser, iso_time, open_repo

if TYPE_CHECKING:
    from overlay.metacopy import Layout

VERIFY_HELP = ("how object content is verified: 'kernel' (fs-verity measured by the kernel; fails "
               "where the filesystem has none), 'userspace' (digest every byte here), 'auto' (the "
               "kernel's where it can, else userspace; the default)")


def _tries(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= MAX_TRIES:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_TRIES}, got {value}")
    return value


def _verify_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify", choices=("kernel", "userspace", "auto"), default="auto", help=VERIFY_HELP)


LAYOUTS = ("hardlinks", "metacopy", "auto")


def _layout_arg(p: argparse.ArgumentParser, default: str | None, help_text: str) -> None:
    p.add_argument("--layout", choices=LAYOUTS, default=default, help=help_text)


def _layout(value: str) -> Layout:
    from overlay.metacopy import Layout  # noqa: F811 - at run time, only when a command needs it
    return Layout(value)


def _count_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--tries", type=_tries, default=DEFAULT_TRIES, metavar="N",
                   help=f"boot tries {what} gets before boots fall back to the previous one "
                        f"(default {DEFAULT_TRIES})")
    p.add_argument("--no-count", action="store_true",
                   help="do not count boots: trust it as known good")


ESP_HELP = ("then make the EFI system partition mounted at DIR match the deployments: each "
            "one's kernel, initramfs and boot entry, the default's entry as loader.conf's "
            "default, entries of removed deployments deleted (README, 'Building images')")


def _esp_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--esp", metavar="DIR", help=ESP_HELP)


def _sync_esp(repo: Any, esp: str | None, as_json: bool = False) -> dict[str, Any] | None:
    """Sync the ESP after a state change (``--esp``); print what changed unless ``as_json``."""
    if esp is None:
        return None
    from image.esp_sync import sync_esp
    result = sync_esp(repo, esp)
    if not as_json:
        print(f"ESP {show(esp)}: default entry {result.default_entry}, {len(result.written)} "
              f"file(s) written, {len(result.removed)} removed")
    return {"path": esp, "default_entry": result.default_entry, "written": result.written,
            "removed": result.removed}


def register(sub: Any) -> None:
    p = add_parser(
        sub, "deploy", "verify a commit's signed pack and objects, and deploy it",
        "Verify the kept pack of REF (packs/<commit>.pack: signatures against the keyring\n"
        "in --keys, else the system keyring /etc/sealtree/keys, never one the repository\n"
        "names; the whole pack; and that it is not older than the newest accepted for\n"
        "its ref) and every large object it names (digest and inode metadata), enabling\n"
        "fs-verity on objects where the filesystem can.  Then record the deployment, in\n"
        "one of two layouts (--layout): hardlinks, a farm deploy/<commit>.<serial>/ of\n"
        "hardlinks to the objects at the large files' paths, checked before each mount;\n"
        "or metacopy, no farm: at mount every large file is an overlay metacopy stub\n"
        "redirected to its object, whose fs-verity digest the kernel checks at every open\n"
        "(verity=require; Linux 6.6+).  It becomes the default deployment, with boot\n"
        "counting.  Its writable /etc is made too (deploy/etc/<id>): a 3-way merge of\n"
        "the default deployment's /etc (local changes kept, the release's applied where\n"
        "nothing was changed locally, conflicts named by path), else a copy of the\n"
        "release's; the shared /var (deploy/var) is seeded from the first deployment,\n"
        "and the tree's kernel and initramfs are copied to deploy/boot/<id>/.\n"
        "With --mount TARGET, also mount it there as 'mount' does, in the\n"
        "same pass: the pack is unpacked into the tmpfs while the\n"
        "objects are hashed, nothing is verified twice, and the overlay is mounted only\n"
        "once every check has passed (on any failure nothing is left mounted).  The\n"
        "last line printed is the deployment id.",
        "examples:\n  sealtree --repo R deploy os/main                 # the system keyring\n"
        "  sealtree --repo R deploy os/main --keys keys --mount /mnt/root")
    p.add_argument("rev", metavar="REF")
    p.add_argument("--keys", metavar="DIR",
                   help="the trusted keyring directory (default: the system keyring, /etc/sealtree/keys; "
                        "never a keyring the repository names)")
    _verify_arg(p)
    _count_args(p, "the new default")
    p.add_argument("--no-default", action="store_true", help="deploy without making it the default")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="accept a pack older than the newest accepted for its ref")
    p.add_argument("--mount", metavar="TARGET", dest="target",
                   help="also mount the deployment read-only at TARGET (a directory; what it "
                        "holds is hidden while the deployment is mounted)")
    p.add_argument("--live", action="store_true",
                   help="with --mount: writable, with writes in memory only")
    p.add_argument("--read-only", action="store_true",
                   help="with --mount: the tree alone, no writable /etc, /var or /tmp over it")
    _layout_arg(p, "auto", "hardlinks: a hardlink farm (objects checked before mounting); "
                "metacopy: no farm, stubs over the objects that the kernel checks at every open "
                "(Linux 6.6+ with fs-verity; else checked once, in userspace); auto (default): "
                "metacopy where the kernel and filesystem can enforce it, else hardlinks")
    _esp_arg(p)
    p.add_argument("--json", action="store_true", help="print the deployment as JSON")
    p.set_defaults(func=cmd_deploy)

    p = add_parser(
        sub, "mount", "re-verify a deployment and mount it read-only",
        "Re-verify DEPLOYMENT as deploy does (pack signatures; every object's digest and\n"
        "metadata; the farm holds exactly the right hardlinks), then mount a\n"
        "tmpfs sized from the manifest, unpack the pack into it with exact metadata, and\n"
        "mount overlayfs at TARGET with the tmpfs above the farm (or the objects) and no upper\n"
        "layer.  Over it, the deployment's writable state: its own /etc (deploy/etc/<id>),\n"
        "the /var all deployments share (deploy/var) and a /tmp tmpfs, as at boot.\n"
        "--read-only mounts the tree alone (nothing writable); --live adds a tmpfs upper\n"
        "layer instead of the state (writes live in memory and vanish on unmount).\n"
        "Nothing is mounted unless every check passes.\n"
        "DEPLOYMENT is an id from 'status', a unique prefix, or default/previous/booted.",
        "example:\n  sealtree --repo R mount default /mnt/root")
    p.add_argument("deployment", metavar="DEPLOYMENT")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--live", action="store_true", help="writable, with writes in memory only")
    p.add_argument("--read-only", action="store_true",
                   help="the tree alone: no writable /etc, /var or /tmp mounted over it")
    _layout_arg(p, None, "mount in this layout (default: the deployment's own)")
    p.add_argument("--keys", metavar="DIR",
                   help="the trusted keyring directory (default: the system keyring, /etc/sealtree/keys; "
                        "never a keyring the repository names)")
    _verify_arg(p)
    p.add_argument("--json", action="store_true", help="print what was mounted as JSON")
    p.set_defaults(func=cmd_mount)

    p = add_parser(sub, "umount", "unmount a mounted deployment",
                   "Unmount the deployment's overlay at TARGET, which releases its tmpfs layers,\n"
                   "with the writable /etc, /var and /tmp mounted over it (refused while anything\n"
                   "else is mounted below TARGET, unless --lazy), and forget the mount in the\n"
                   "deployment state (when --repo is known).  Only a\n"
                   "deployment's overlay is unmounted (one whose lowest layer is a deploy\n"
                   "directory; with --repo, one of that repository's): any other mount at TARGET\n"
                   "is refused.")
    p.add_argument("target", metavar="TARGET")
    p.add_argument("--lazy", action="store_true", help="detach now even if busy (MNT_DETACH)")
    p.set_defaults(func=cmd_umount)

    p = add_parser(sub, "status", "list deployments",
                   "List deployments: id, commit, ref, version, whether default or previous, boot\n"
                   "tries left (and which deployment the next boot picks), and where each is\n"
                   "mounted now (read from /proc/self/mountinfo: any overlay over its deploy\n"
                   "directory).  --json prints an object whose 'deployments' list has one object\n"
                   "per deployment, with the 'id' that mount, undeploy and set-default accept;\n"
                   "'next_boot' names the deployment the next boot picks.")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_status)

    p = add_parser(sub, "undeploy", "remove a deployment",
                   "Forget DEPLOYMENT and delete its farm.  Refused while it is mounted\n"
                   "anywhere (any overlay over its farm or tmpfs) or is the default.")
    p.add_argument("deployment", metavar="DEPLOYMENT")
    _esp_arg(p)
    p.set_defaults(func=cmd_undeploy)

    p = add_parser(sub, "set-default", "make a deployment the default",
                   "Make DEPLOYMENT the default (the old default becomes the previous one), with\n"
                   "boot counting unless --no-count.")
    p.add_argument("deployment", metavar="DEPLOYMENT")
    _count_args(p, "it")
    _esp_arg(p)
    p.set_defaults(func=cmd_set_default)

    p = add_parser(sub, "rollback", "make the previous deployment the default",
                   "Swap the default and the previous deployment.")
    _esp_arg(p)
    p.set_defaults(func=cmd_rollback)

    p = add_parser(sub, "mark-good", "end boot counting: the booted deployment works",
                   "Run once the system is up: the deployment booted last (or DEPLOYMENT, or the\n"
                   "default) stops counting boot tries.")
    p.add_argument("deployment", metavar="DEPLOYMENT", nargs="?")
    p.set_defaults(func=cmd_mark_good)


def _policy(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from overlay.objcheck import Policy
    return Policy(args.verify)


def _tries_of(args: argparse.Namespace) -> int | None:
    return None if args.no_count else args.tries


def cmd_deploy(args: argparse.Namespace) -> None:
    if args.live and not args.target:
        raise UsageError("--live needs --mount TARGET")
    if args.read_only and not args.target:
        raise UsageError("--read-only needs --mount TARGET")
    if args.live and args.read_only:
        raise UsageError("--live and --read-only exclude each other")
    from overlay.deploy import deploy
    repo = open_repo(args)
    result = deploy(repo, args.rev, args.keys, policy=_policy(args), make_default=not args.no_default,
                    tries=_tries_of(args), allow_downgrade=args.allow_downgrade,
                    target=args.target, live=args.live, layout=_layout(args.layout),
                    with_state=not args.read_only and not args.live)
    dep, check, mounted = result.deployment, result.check, result.mount
    if args.json:
        doc = {"id": dep.id, "commit": dep.commit, "ref": dep.ref, "version": dep.version,
               "path": result.path, "objects": check.files, "bytes": check.bytes,
               "kernel_verified": check.kernel, "userspace_verified": check.userspace,
               "verity_enabled": check.enabled, "layout": dep.layout,
               **_prepared_doc(result.state)}
        if mounted is not None:
            doc.update({"target": mounted.target, "live": args.live, "api": mounted.api,
                        "verity": mounted.verity, "enforced": mounted.enforced,
                        **mounted.lower_doc(),
                        "state": _state_doc(mounted.state),
                        "files": mounted.populate.files, "links": mounted.populate.links,
                        "dirs": mounted.populate.dirs, "symlinks": mounted.populate.symlinks})
        if result.image is not None:  # checked, also without a mount
            doc.setdefault("image", result.image.describe())
        doc["seconds"] = {k: round(v, 4) for k, v in result.timings.items()}
        doc["esp"] = _sync_esp(repo, args.esp, as_json=True)
        print_json(doc)
        return
    print(f"verified {check.files} objects ({check.kernel} by the kernel, {check.userspace} in "
          f"userspace; fs-verity enabled on {check.enabled}) for {dep.ref} {dep.commit[:12]}")
    _say_prepared(result.state)
    if mounted is not None:
        print(f"mounted at {show(mounted.target)}, {_mode(args.live, mounted.state)}")
        _say_enforcement(mounted)
    print(f"layout {dep.layout}")
    _sync_esp(repo, args.esp)
    print(f"deployed {dep.id}")


def _prepared_doc(prepared: Any) -> dict[str, Any]:
    """deploy --json: how the writable /etc was made, the /var seed, the boot files."""
    if prepared is None:
        return {}
    etc = prepared.etc
    boot = prepared.boot
    return {
        "etc": None if etc is None else {
            "path": prepared.layout.etc(prepared.dep_id), "how": etc.how,
            "merged_from": etc.merged_from, "kept": etc.kept, "updated": etc.updated,
            "conflicts": etc.conflicts, "note": etc.note},
        "var_seeded": prepared.var_seeded, "var": prepared.layout.var,
        "boot": None if boot is None else {
            "path": prepared.layout.boot(prepared.dep_id),
            "files": {name: show(tree_path) for name, tree_path in boot.paths().items()}},
    }


def _say_prepared(prepared: Any) -> None:
    if prepared is None:
        return
    if prepared.etc is None:
        print("/etc: the tree has none (no writable /etc)")
    else:
        print(f"/etc: {prepared.etc.summary()}")
        for line in prepared.etc.describe_conflicts():
            print(f"CONFLICT {line}")
    if prepared.var_seeded:
        print(f"/var: seeded from this tree at {show(prepared.layout.var)} (shared by every "
              f"deployment from now on)")
    if prepared.boot is not None:
        files = ", ".join(f"{name} (/{show(path)})" for name, path in prepared.boot.paths().items())
        print(f"boot files: {files} in {show(prepared.layout.boot(prepared.dep_id))}")


def _say_enforcement(mounted: Any) -> None:
    if mounted.layout != "metacopy":
        return
    if mounted.image is not None:
        print(f"lower layer: the pack's EROFS image {show(mounted.image.path)} (fs-verity digest "
              f"{mounted.image.digest.hex()}, {mounted.image.measured}-checked"
              f"{', built now' if mounted.image.built else ''})")
    if mounted.enforced:
        print("the kernel checks every large file's fs-verity digest at each open (verity=require)")
    else:
        print("note: the kernel does not enforce the digests here (no fs-verity): the objects "
              "were checked once, in userspace")


def _mode(live: bool, state: Any) -> str:
    if live:
        return "live (writes in memory)"
    if state is None:
        return "read-only"
    return f"read-only tree, {state.describe()}"


def cmd_mount(args: argparse.Namespace) -> None:
    if args.live and args.read_only:
        raise UsageError("--live and --read-only exclude each other")
    from overlay.mount_deployment import mount_deployment
    repo = open_repo(args)
    dep, result = mount_deployment(repo, args.deployment, args.target, keys_dir=args.keys,
                                   policy=_policy(args), live=args.live,
                                   layout=_layout(args.layout) if args.layout else None,
                                   with_state=not args.read_only and not args.live)
    if args.json:
        print_json({"id": dep.id, "target": result.target, "live": args.live, "api": result.api,
                    "objects": result.check.files, "files": result.populate.files,
                    "links": result.populate.links, "dirs": result.populate.dirs,
                    "symlinks": result.populate.symlinks, "layout": result.layout,
                    "verity": result.verity, "enforced": result.enforced,
                    **result.lower_doc(),
                    "state": _state_doc(result.state),
                    "seconds": {k: round(v, 4) for k, v in result.timings.items()}})
        return
    print(f"mounted {dep.id} at {show(result.target)}, {_mode(args.live, result.state)}, "
          f"layout {result.layout}")
    _say_enforcement(result)


def _state_doc(state: Any) -> dict[str, Any] | None:
    """What was mounted over the tree: {"etc": source, "var": source, "tmp": "tmpfs"}."""
    if state is None:
        return None
    return {"mounted": dict(state.mounted), "created": list(state.created)}


def cmd_umount(args: argparse.Namespace) -> None:
    from overlay.mount_deployment import unmount
    from store.repo import Repository
    repo = Repository.open(args.repo) if args.repo else None
    dep = unmount(repo, args.target, lazy=args.lazy)
    print(f"unmounted {dep.id + ' from ' if dep else ''}{show(os.path.abspath(args.target))}")


def _image_doc(repo: Any, dep: Any) -> dict[str, Any] | None:
    """status: the EROFS image a metacopy deployment's lower layer is (from its kept pack's
    header, unverified here), or None (hardlinks layout, a version-1 pack, no pack)."""
    if dep.layout != "metacopy":
        return None
    from pack.reader import read_image_ref
    from store.errors import PackError
    from store.ids import RawId
    try:
        ref = read_image_ref(os.path.join(repo.path, dep.pack))
    except (OSError, PackError):
        return None
    if ref is None:
        return None
    path = repo.objects.image_path(RawId(ref.digest))
    return {"digest": ref.digest.hex(), "size": ref.size, "path": path,
            "present": os.path.exists(path)}


def _status_doc(repo: Any) -> dict[str, Any]:
    from overlay.deploy import deployment_present
    from overlay.layout import deploy_layout
    from overlay.mounted_farms import deployment_mounts
    from overlay.state import choose_deployment_for_boot, state_file
    layout = deploy_layout(repo)
    state = state_file(repo).read()
    mounted = deployment_mounts(layout.root)
    next_boot = choose_deployment_for_boot(state).deployment.id if state.default else None
    out = []
    for dep in state.deployments:
        out.append({
            "id": dep.id, "commit": dep.commit, "ref": dep.ref, "version": dep.version,
            "created": dep.created, "date": iso_time(dep.created),
            "default": dep.id == state.default, "previous": dep.id == state.previous,
            "booted": dep.id == state.booted, "tries_left": dep.tries_left,
            "next_boot": dep.id == next_boot, "mounted_at": mounted.get(dep.id, []),
            "layout": dep.layout,
            "path": (repo.objects.root if dep.layout == "metacopy"
                     else layout.farm(dep.id)),
            "image": _image_doc(repo, dep),
            "present": deployment_present(repo, dep),
            "pack": dep.pack, "pack_sha256": dep.pack_sha256, "keys": dep.keys,
            **_dep_state_doc(layout, dep.id),
        })
    try:
        boot_default: str | None = os.readlink(layout.boot_default)
    except OSError:
        boot_default = None
    return {"default": state.default, "previous": state.previous, "booted": state.booted,
            "next_boot": next_boot, "boot_default": boot_default, "var": layout.var,
            "deployments": out}


def _dep_state_doc(layout: Any, dep_id: str) -> dict[str, Any]:
    """status: a deployment's writable /etc (and how it was made), its boot files."""
    from overlay.deploy_state import StateError, read_report
    etc_path = layout.etc(dep_id)
    etc: dict[str, Any] | None = None
    if os.path.isdir(etc_path):
        etc = {"path": etc_path, "how": None, "merged_from": None, "conflicts": []}
        try:
            report = read_report(layout, dep_id)
        except StateError as err:
            etc["error"] = str(err)
            report = None
        if report is not None:
            etc.update({"how": report.how, "merged_from": report.merged_from,
                        "kept": len(report.kept), "updated": len(report.updated),
                        "conflicts": report.conflicts, "summary": report.summary()})
    boot_path = layout.boot(dep_id)
    return {"etc": etc, "boot": boot_path if os.path.isdir(boot_path) else None}


def cmd_status(args: argparse.Namespace) -> None:
    doc = _status_doc(open_repo(args))
    if args.json:
        print_json(doc)
        return
    if not doc["deployments"]:
        print("no deployments")
        return
    for dep in doc["deployments"]:
        marks = [m for m in ("default", "previous", "booted") if dep[m]]
        head = f"{'*' if dep['default'] else ' '} {dep['id']}"
        print(head + (f" ({', '.join(marks)})" if marks else ""))
        print(f"    ref {dep['ref']}  version {dep['version'] or '-'}  deployed {dep['date']}")
        tries = "not counting (good)" if dep["tries_left"] is None else str(dep["tries_left"])
        if dep["default"] and not dep["next_boot"]:
            tries += f" (the next boot falls back to {doc['next_boot']})"
        print(f"    boot tries left: {tries}")
        print(f"    layout: {dep['layout']}")
        _say_dep_state(dep)
        if dep["mounted_at"]:
            print(f"    mounted at: {', '.join(show(target) for target in dep['mounted_at'])}")
        if not dep["present"]:
            print(f"    MISSING: {show(dep['path'])} does not exist")


def _say_dep_state(dep: dict[str, Any]) -> None:
    etc = dep["etc"]
    if etc is None:
        print("    /etc: no writable /etc yet (made at its first mount)")
    else:
        print(f"    /etc: {show(etc['path'])}, {etc.get('summary') or etc.get('error') or 'writable'}")
        for c in etc["conflicts"]:
            print(f"    CONFLICT {c['path']}: {c['user']} by the user, {c['vendor']} by the new "
                  f"release (the user's version kept)")
    if dep["boot"] is not None:
        print(f"    boot files: {show(dep['boot'])}")


def cmd_undeploy(args: argparse.Namespace) -> None:
    from overlay.deploy import undeploy
    repo = open_repo(args)
    dep = undeploy(repo, args.deployment)
    print(f"removed deployment {dep.id}")
    _sync_esp(repo, args.esp)


def cmd_set_default(args: argparse.Namespace) -> None:
    from overlay.state import state_file
    repo = open_repo(args)
    with state_file(repo).update() as state:
        dep = state.find(args.deployment)
        state.set_default(dep.id, _tries_of(args))
    print(f"default deployment: {dep.id}")
    _sync_esp(repo, args.esp)


def cmd_rollback(args: argparse.Namespace) -> None:
    from overlay.state import state_file
    repo = open_repo(args)
    with state_file(repo).update() as state:
        state.rollback()
        default = state.default
    print(f"default deployment: {default}")
    _sync_esp(repo, args.esp)


def cmd_mark_good(args: argparse.Namespace) -> None:
    from overlay.state import mark_good, state_file
    with state_file(open_repo(args)).update() as state:
        chosen = state.find(args.deployment).id if args.deployment else None
        dep = mark_good(state, chosen)
    print(f"marked good: {dep.id}")

