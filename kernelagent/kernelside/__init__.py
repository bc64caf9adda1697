"""What runs inside a session's kernel: an IPython extension, loaded once per kernel process.

``%load_ext kernelagent.kernelside`` (the server loads it silently before a kernel's first cell,
with ``LOAD_CODE``) makes every pandas DataFrame display also carry a summary for the agent's view
of outputs (``dataframes``), follows which cells ran, for the namespace snapshots (``state``),
hands ``%pip install`` to the server (``packages``), and has the kernel reply without its
pause (``reply_at_once``);
``probe.workspace()`` tells the agent what the workspace holds and which libraries the kernel
has. This package imports nothing else of kernelagent: the kernel
may run from another environment (a kernel image) than the server.
"""

from __future__ import annotations

import warnings
from typing import Any

from kernelagent.kernelside import dataframes, packages, state

#: Run silently in a new kernel: loads this extension, binding no name in the user's namespace.
LOAD_CODE = f'__import__("IPython").get_ipython().extension_manager.load_extension({__name__!r})'


def load_ipython_extension(ipython: Any) -> None:
    # IPython's note that its output cache (``Out``, ``_N``) is full is meant for a terminal:
    # here it would be an output of whichever cell happened to be the 1000th
    warnings.filterwarnings("ignore", "Output cache limit", UserWarning, "IPython.core.displayhook")
    dataframes.register(ipython)
    state.register(ipython)
    packages.register(ipython)
    reply_at_once(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    dataframes.unregister(ipython)
    state.unregister(ipython)
    packages.unregister(ipython)
    reply_at_once(ipython, False)


_PAUSE = "_execute_sleep"  # ipykernel's pause before each execute_reply (0.5 ms), in seconds
_paused: dict[int, float] = {}  # id(kernel) → its pause before the extension took it away


def reply_at_once(ipython: Any, on: bool = True) -> None:
    """ipykernel sleeps before each ``execute_reply`` so that clients which stop at the reply
    get the last outputs first. The server, like Jupyter's own frontends, reads until the idle
    status, which the kernel sends after every output of the cell: the pause only delays it."""
    kernel = getattr(ipython, "kernel", None)
    if kernel is None or not hasattr(kernel, _PAUSE):
        return
    if on:
        _paused.setdefault(id(kernel), getattr(kernel, _PAUSE))
        setattr(kernel, _PAUSE, 0.0)
    elif id(kernel) in _paused:
        setattr(kernel, _PAUSE, _paused.pop(id(kernel)))
