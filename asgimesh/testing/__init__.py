"""Helpers for testing code that uses asgimesh."""

from ._controlplane import ControlPlaneHandle, control_plane, serve_in_thread

__all__ = ["ControlPlaneHandle", "control_plane", "serve_in_thread"]
