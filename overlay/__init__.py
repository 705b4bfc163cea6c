"""Deployments: hardlink farm, tmpfs unpack, overlay mounts, state, boot verifier.

One module per job: ``layout`` (where the deployments' files are, and the
system keyring), ``mounts`` (mount(2)/new mount API, tmpfs and overlay as
context managers, /proc/self/mountinfo), ``state`` (the state file, default,
rollback, boot counting), ``deployment_pack`` (the trusted keyring and the
signed pack a deployment is verified from), ``objcheck`` (each large object
against the signed manifest: inode metadata and fs-verity digest), ``farm``
(the hardlink farm), ``metacopy`` (the kernel-enforced layout: stubs, their
overlay xattrs, which layout ``auto`` picks), ``unpack_tmpfs`` (the pack into
the tmpfs, and its size, stubs included),
``staging`` (the tmpfs layers of one mount), ``mounted_farms`` (which
deployments are mounted, from mountinfo), ``deploy`` (verify, farm, record),
``mount_deployment`` (re-verify, tmpfs, overlay; unmount), ``boot_config``,
``boot_floor``, ``boot`` and ``boot_main`` (the boot verifier: its
configuration, its freshness floor, its run, and its entry point that turns any
failure into one console line), ``remount`` (the sysroot read-write by
mount(2)), ``provision`` (fs-verity on every object, or at first boot),
``etc_merge`` (the 3-way merge of /etc between deployments), ``deploy_state``
(what deploy makes besides the farm: the writable /etc, the /var seed, the boot
files), ``boot_files`` (which kernel and initramfs, and ``deploy/boot/default``),
``writable`` (the writable /etc, shared /var and /tmp tmpfs mounted over a tree).
Imports only store, pack, overlay, zstandard, cryptography and the standard
library, so the boot verifier can be copied into an initramfs.  Formats:
docs/FORMAT.md, sections 9 (deployments), 10 (boot verifier) and 14 (writable
state).
"""
