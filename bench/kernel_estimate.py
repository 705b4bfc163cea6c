"""Bench-only: what ``deploy --mount`` would cost where the kernel has fs-verity.

This host's kernel has none, so ``deploy --verify kernel`` fails closed here (as
it must).  To estimate the kernel path, this runs the real ``overlay.deploy``
with ``--verify kernel`` semantics, in a process started like the CLI, through
the ``verity=`` hook the tests use: for each object it issues the real
``FS_IOC_MEASURE_VERITY`` ioctl on the open file (so the system call is paid;
here it fails with ENOTTY instead of copying out 32 bytes, and that failure is not
turned into the exception ``store.kverity`` would raise), then answers with
the digest the object's file name carries, as the kernel would for an
untampered object.  Everything else (pack signatures and parsing, metadata of
every object, tmpfs unpack, farm, sync, overlay mount, state, and its writable
/etc, /var and /tmp mounted over the tree as ``sealtree deploy --mount`` does) is
the product's code, unchanged.  Nothing here is reachable from the product: it is not a mode
of sealtree, only a measurement.

    PYTHON bench/kernel_estimate.py --repo R --keys DIR --mount TARGET [--layout L] REF

where PYTHON is an interpreter sealtree is installed for (the suite uses its
virtual environment's; run as a script, this file imports sealtree from there).

prints the deployment id as its last line, like ``sealtree deploy``.  Not
modelled: on a cold cache a real measure reads each object's verity
descriptor from disk (one small read per object).

``--layout metacopy`` estimates the kernel-enforced metacopy layout (issue 17):
with every object "measured by the kernel", the product mounts the overlay with
``verity=require`` over stubs whose digest xattrs the kernel would check at each
open; here the mount is made with that option but nothing is read through it
(on this host an open of a large file would fail: its object has no fs-verity).
The per-object step skipped is the userspace digest, as for the hardlinks layout; each
object's open, fstat and measure ioctl are still made.  ``--objects skipped`` skips those
too (``_skip_object_checks``): the estimate as issue 17 defines it, "with the per-object
step skipped".
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from sealtree.cli_format import Formatter  # noqa: PLC0415 - the CLI's: no shutil import

    parser = argparse.ArgumentParser(prog="kernel_estimate.py", formatter_class=Formatter)
    parser.add_argument("--repo", required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--mount", required=True, dest="target")
    parser.add_argument("--no-default", action="store_true")
    parser.add_argument("--layout", choices=("auto", "hardlinks", "metacopy"), default="auto")
    parser.add_argument("--objects", choices=("measured", "skipped"), default="measured")
    parser.add_argument("rev")
    args = parser.parse_args(argv)
    from sealtree.cli import build_parser  # noqa: PLC0415

    build_parser("deploy")  # pay the CLI's start-up, as `sealtree deploy` does
    from overlay.deploy import deploy
    if args.objects == "skipped":
        _skip_object_checks()
    from overlay.metacopy import Layout
    from overlay.objcheck import Policy, Verity
    from store import kverity
    from store.repo import Repository

    def measure_fd(fd: int, path: str) -> bytes | None:
        # The measure ioctl, with kverity.measure_fd's buffer: the system call is paid (here it
        # fails with ENOTTY, where the kernel would copy out the digest); the Python exception
        # kverity would raise for that failure is not (a kernel with fs-verity raises none).
        try:
            fcntl.ioctl(fd, kverity.FS_IOC_MEASURE_VERITY, bytearray(36))
        except OSError:
            pass
        name = os.path.basename(path)
        return bytes.fromhex(os.path.basename(os.path.dirname(path)) + name.split(".", 1)[0])

    def enable(path: str) -> bool:
        raise AssertionError(f"{path}: objects carry fs-verity already on such a system")

    result = deploy(Repository.open(args.repo), args.rev, args.keys, policy=Policy.KERNEL,
                    make_default=not args.no_default, target=args.target,
                    layout=Layout(args.layout), with_state=True, verity=Verity(measure_fd, enable))
    mounted = result.mount
    print({k: round(v, 4) for k, v in result.timings.items()}, result.deployment.layout,
          f"verity={mounted.verity}" if mounted is not None else "", file=sys.stderr)
    print(f"deployed {result.deployment.id}")
    return 0


def _skip_object_checks() -> None:
    """``--objects skipped``: the per-object step skipped, as issue 17 defines its estimate.

    The deploy's checks of the large objects (``overlay.objcheck.start_checks``) are replaced
    by a report that the kernel measured every one as the manifest says, with no system call
    (on a system with fs-verity each is an open, an fstat and a measure ioctl: the row without
    this option pays those).  Everything else is the product's code.
    """
    from overlay import deploy as deploy_module  # noqa: PLC0415
    from overlay.objcheck import CheckReport, PendingCheck  # noqa: PLC0415

    class Measured(PendingCheck):
        def wait(self) -> CheckReport:
            count = len(self.items)
            return CheckReport(files=count, bytes=sum(item.size for item in self.items),
                               kernel=count)

    def skipped(items, _policy, **_options):  # type: ignore[no-untyped-def]
        return Measured(items)

    deploy_module.start_checks = skipped  # type: ignore[assignment]


if __name__ == "__main__":
    sys.exit(main())
