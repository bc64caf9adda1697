"""What both sandboxes are configured with: limits, the runtime directory, kernel uids and extra
environment, as traitlets (``c.BubblewrapProvisioner.memory_limit = …``, the same name on
``DockerProvisioner``, or the ``config`` of a kernelspec's ``kernel_provisioner`` metadata)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from traitlets import Dict, Float, Int, Unicode, default
from traitlets.config import LoggingConfigurable

from kernelagent.sandbox import command
from kernelagent.sandbox.limits import Limits


class SandboxError(RuntimeError):
    """The sandbox cannot start here; the message names the cause and the fix."""


class SandboxOptions(LoggingConfigurable):
    """The options and the layout-derived facts both provisioners share (a mixin)."""

    runtime_dir = Unicode(help="Where per-kernel sockets and files live (short path)").tag(
        config=True
    )
    memory_limit = Int(1024**3, help="Bytes of memory (no swap); 0 = none").tag(config=True)
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
    env = Dict(Unicode(), help="Extra environment variables for the kernel").tag(config=True)

    _layout: command.Layout | None = None
    _exit_reason: str | None = None

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
    def packages_dir(self) -> Path | None:
        """The host directory bound read-only at ``/opt/packages``, which the server fills."""
        return self._layout.packages_dir if self._layout else None

    @property
    def host_uid(self) -> int:
        """The host uid the kernel's processes run as."""
        assert self._layout
        return os.geteuid() if self._layout.host_uid is None else self._layout.host_uid

    def exit_reason(self) -> str | None:
        """Why the kernel died, in words a user can act on; None while it runs."""
        return self._exit_reason

    def layout(self, cwd: str | None) -> command.Layout:
        """Where this kernel's files go: ``cwd`` is its workspace (else one of its own)."""
        root = Path(self.runtime_dir)
        kernel_dir = root / self.kernel_id.replace("-", "")[:12]  # type: ignore[attr-defined]
        workspace = Path(cwd).resolve() if cwd else kernel_dir / "workspace"
        uid = None
        if os.geteuid() == 0:
            uid = command.sandbox_uid(self.kernel_id, self.uid_base, self.uid_span)  # type: ignore[attr-defined]
        return command.Layout(root, kernel_dir, workspace, uid)

    async def _over_ipc(
        self, layout: command.Layout, **kwargs: Any
    ) -> tuple[list[str], dict[str, str], dict[str, Any]]:
        """Point the manager at ipc sockets in the kernel's directory and let jupyter_client
        write the connection file and the command (``LocalProvisioner.pre_launch``).

        Returns the argv inside the sandbox (naming the inner connection file), the variables
        the kernel gets besides its own (those its kernelspec declares, ``env``), and what is
        left of the launch arguments. Nothing else of the server's environment crosses.
        """
        km = self.parent
        km.transport = "ipc"
        km.ip = layout.ipc_base
        km.cache_ports = False
        km.connection_file = str(layout.connection_file)
        if len(km.ip.encode()) + 3 > command.SUN_PATH_MAX:
            raise SandboxError(f"ipc socket path {km.ip!r} is too long; use a shorter runtime_dir")
        kwargs = await super().pre_launch(**kwargs)  # type: ignore[misc]
        host_cmd: list[str] = kwargs.pop("cmd")
        server_env: dict[str, str] = kwargs.pop("env")
        argv = [
            command.INNER_CONNECTION_FILE if arg == km.connection_file else arg for arg in host_cmd
        ]
        if command.INNER_CONNECTION_FILE not in argv:
            raise SandboxError("the kernelspec argv must contain {connection_file}")
        spec_env = self.kernel_spec.env  # type: ignore[attr-defined]
        extra = {**{k: server_env[k] for k in spec_env if k in server_env}, **self.env}
        if "JPY_SESSION_NAME" in server_env:
            extra.setdefault("JPY_SESSION_NAME", server_env["JPY_SESSION_NAME"])
        return argv, extra, kwargs

    def _prepare_dirs(self, layout: command.Layout) -> None:
        """The kernel's directory, its socket directory and its workspace, owned by its uid."""
        layout.kernel_dir.mkdir(mode=0o711, exist_ok=True)
        os.chmod(layout.kernel_dir, 0o711 if layout.host_uid is not None else 0o700)
        layout.ipc_dir.mkdir(mode=0o700, exist_ok=True)
        for sock in layout.ipc_dir.glob("k-*"):
            sock.unlink()
        layout.workspace.mkdir(parents=True, exist_ok=True)
        # the server's; the kernel reads it, with site/ on sys.path from the start
        (layout.packages_dir / "site").mkdir(mode=0o755, parents=True, exist_ok=True)
        layout.packages_dir.chmod(0o755)
        if layout.host_uid is not None:
            os.chown(layout.ipc_dir, layout.host_uid, layout.host_uid)
            chown_tree(layout.workspace, layout.host_uid)

    def _remove_files(self, restart: bool) -> None:
        """The kernel's sockets; its whole directory unless it restarts."""
        layout = self._layout
        if layout is None:
            return
        for sock in layout.ipc_dir.glob("k-*"):
            with contextlib.suppress(OSError):
                sock.unlink()
        if not restart:
            shutil.rmtree(layout.kernel_dir, ignore_errors=True)


def chown_tree(root: Path, uid: int) -> None:
    """Give a workspace to the kernel's uid (a server running as root)."""
    os.chown(root, uid, uid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)
