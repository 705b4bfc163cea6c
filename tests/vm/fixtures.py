"""Session-scoped pytest fixtures for tests that boot a guest under qemu.

Import them into a test module (``from tests.vm.fixtures import vm_kernel``);
they live here rather than in a conftest.py so that tests anywhere under
tests/ can use them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import guest


@pytest.fixture(scope="session")
def vm_kernel() -> Path:
    """The guest kernel image (downloaded and extracted once, cached on disk).

    Skips the test, with the reason, only when qemu cannot run on this machine.
    Also builds the cached busybox+python initramfs base, so that a test's own
    ``build_initramfs`` call takes about a second.
    """
    reason = guest.qemu_unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    guest.base_segment()
    return guest.kernel().vmlinuz


@pytest.fixture(scope="session")
def host_fsverity() -> str:
    """The host's ``fsverity`` command (apt package ``fsverity``), installed if missing."""
    guest.ensure_tools({"fsverity": "fsverity"})
    return "fsverity"


@pytest.fixture(scope="session")
def vm_kernel_612() -> guest.Kernel:
    """Debian trixie's 6.12 kernel (overlayfs ``verity=``, data-only layers), cached on disk
    (fetched through a private apt source list: ``guest.trixie_kernel``)."""
    reason = guest.qemu_unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    guest.base_segment()
    return guest.trixie_kernel()
