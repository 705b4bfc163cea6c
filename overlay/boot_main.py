"""The boot verifier's entry point in an initramfs: every failure is one console line.

``sealtree-boot`` runs ``python3 -m overlay.boot_main``.  Whatever stops the
verifier (a module that cannot be imported because a shared library was left
out of the initramfs, a bug) must end as one ``sealtree-boot: FAILED: ...``
line and the refusal's exit status, never a Python traceback: the console is
what an operator reads, and the initramfs scripts stop the boot on that
status as they do for a refusal.  This module imports only ``sys`` before it
is inside the guard, so even a broken ``store`` or ``cryptography`` is
reported this way.
"""

from __future__ import annotations

import sys

PREFIX = "sealtree-boot: "
EXIT_FAILED = 1  # the same as overlay.boot.EXIT_REFUSED: the boot stops


def _failed(what: str, err: BaseException) -> None:
    # Not store.names.show: the failure may be that store cannot be imported.  A line
    # break must still never reach the console, where it could forge a line of its own.
    detail = f"{what}: {type(err).__name__}: {err}".replace("\n", "\\x0a").replace("\r", "\\x0d")
    print(f"{PREFIX}FAILED: {detail}", flush=True)


def main() -> int:
    """Run ``overlay.boot.main``; report any failure as one FAILED line and return non-zero."""
    # BaseException on purpose, in this one place: anything at all (ImportError, an
    # OSError from a missing library, MemoryError, KeyboardInterrupt) must become the
    # FAILED line.  SystemExit is argparse's usage error or --help: it passes.
    try:
        from overlay import boot
    except BaseException as err:
        _failed("cannot load the verifier", err)
        return EXIT_FAILED
    try:
        return boot.main()
    except SystemExit:
        raise
    except BaseException as err:
        _failed("the verifier stopped", err)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
