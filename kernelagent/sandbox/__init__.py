"""Kernel sandboxes as jupyter_client provisioners, usable by any Jupyter tool.

Reached through kernelspecs (``kernel_images/``); imports nothing from the rest of kernelagent.
"""

from kernelagent.sandbox.bwrap import BubblewrapProvisioner, SandboxError, set_subreaper

__all__ = ["BubblewrapProvisioner", "SandboxError", "set_subreaper"]
