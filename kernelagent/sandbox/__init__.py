"""Kernel sandboxes as jupyter_client provisioners, usable by any Jupyter tool.

Reached through kernelspecs (``kernel_images/``): bubblewrap (``bwrap.py``) and Docker
(``container.py``, with ``engine.py``); imports nothing from the rest of kernelagent.
"""

from kernelagent.sandbox.bwrap import BubblewrapProvisioner, set_subreaper
from kernelagent.sandbox.container import DockerProvisioner
from kernelagent.sandbox.options import SandboxError

__all__ = ["BubblewrapProvisioner", "DockerProvisioner", "SandboxError", "set_subreaper"]
