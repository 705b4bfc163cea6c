"""Flashable disk images of a signed deployment (``sealtree image build``).

A GPT disk with an EFI system partition (systemd-boot, loader.conf, Boot Loader
Specification entries) and a sysroot partition (ext4 ``-O verity``) holding a device
repository with the deployment, every byte a function of the commit, the signed pack and
the keyring, so that two builds give the same image.  Layout: docs/FORMAT.md ("Disk images").

This layer may import ``overlay``, ``pack`` and ``store``; never ``sealtree`` or ``remote``.
"""
