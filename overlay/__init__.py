"""Deployments: hardlink farm, tmpfs unpack, overlay mounts, state, boot verifier.

One module per job: ``mounts`` (mount(2)/new mount API, tmpfs and overlay as
context managers, /proc/self/mountinfo), ``state`` (the state file, default,
rollback, boot counting), ``objcheck`` (each large object against the signed
manifest: inode metadata and fs-verity digest), ``farm`` (the hardlink farm),
``populate`` (the pack into the tmpfs), ``deploy`` (verify, farm, record),
``mount_deployment`` (re-verify, tmpfs, overlay; unmount).  Imports only
store, pack, overlay, zstandard, cryptography and the standard library, so the
boot verifier can be copied into an initramfs.  Formats: FORMAT-deploy.md.
"""
