"""The old name of ``overlay.mounted_farms``, kept importable for callers not yet moved."""

from .mounted_farms import DeploymentMount, deployment_mount, deployment_mounts, same_directory

__all__ = ["DeploymentMount", "deployment_mount", "deployment_mounts", "same_directory"]
