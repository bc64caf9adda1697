"""The launch command of a sandboxed kernel: directory layout, bwrap arguments, privilege drop.

Pure functions over a :class:`Layout`; the provisioner (``bwrap.py``) owns the side effects.

The launch chain, when the server runs as root::

    setpriv --pdeathsig SIGKILL -- sh -c GUARD  # dies with the server, or now if it is gone
      → unshare --mount -- sh -c STAGE …    # private mount namespace: cgroups, bind staging
      → prlimit --data=… --nproc=… --        # rlimits, inherited by everything below
      → setpriv --reuid=U --regid=U …        # an unprivileged host uid, no capabilities, and
                                             # killed with the server (--pdeathsig)
      → bwrap --args FD -- python -m ipykernel_launcher -f /run/kernel.json

and as an ordinary user just the guard, then ``prlimit … -- bwrap --args FD -- python …``. The
parent-death signal survives each ``exec`` but not the uid change, so the privilege drop arms it
again; bwrap's ``--die-with-parent`` then covers the sandbox. bwrap resolves its bind
sources as the dropped uid, so a source under a directory that uid cannot enter (a pyenv under
``/root``, a ``0700`` temp dir) is first bind-mounted, by root, onto an empty directory of the
kernel's runtime dir inside the private mount namespace ("staging").

Inside: only ``lo`` (own network namespace; ZMQ uses ipc sockets in ``/run/kernel``), its own PID
namespace, uid 1000, read-only ``/usr``, Python environment and ``/opt/packages`` (what the server
installed for the session), writable ``/workspace`` and sized
tmpfs ``/tmp``, ``/dev/shm`` and ``$HOME``, read-only ``/dev`` and root, no new privileges, no
nested user namespaces, and an environment built from scratch.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import zlib
from pathlib import Path

from kernelagent.sandbox.limits import Limits

INNER_UID = 1000
INNER_HOME = "/home/sandbox"
INNER_IPC_DIR = "/run/kernel"
INNER_CONNECTION_FILE = "/run/kernel.json"
INNER_WORKSPACE = "/workspace"
INNER_PACKAGES = "/opt/packages"  # what the server installed for the session, read-only
SUN_PATH_MAX = 107  # bytes of an AF_UNIX path, including the "-N" port suffix zmq appends

STAGE_SCRIPT = r"""set -e
while [ "$1" != "--" ]; do
  case "$1" in
    cgroup) echo $$ > "$2"; shift 2 ;;
    bind) mount --bind "$2" "$3"; shift 3 ;;
    *) echo "kernelagent launch: unknown step $1" >&2; exit 2 ;;
  esac
done
shift
exec "$@"
"""


def etc_files(uid: int) -> dict[str, str]:
    """The sandbox's ``/etc`` account files: root, the kernel's user (``uid``) and nobody."""
    return {
        "passwd": (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"sandbox:x:{uid}:{uid}:sandbox:{INNER_HOME}:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
    }


ETC_FILES = etc_files(INNER_UID)
HOST_ETC_FILES = ("ld.so.cache", "localtime", "mime.types", "fonts", "alternatives", "matplotlibrc")
USR_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one kernel's files live on the host, and who it runs as."""

    runtime_root: Path  # shared by all kernels of this server: etc/ files, a copy of bwrap
    kernel_dir: Path  # this kernel: connection file, ipc/, log, staging mount points
    workspace: Path  # bound read-write at /workspace
    host_uid: int | None  # uid to drop to (server is root), None to keep the server's uid

    @property
    def ipc_dir(self) -> Path:
        return self.kernel_dir / "ipc"

    @property
    def ipc_base(self) -> str:
        """The zmq ipc "ip" on the host; the ports are appended as ``-1`` … ``-5``."""
        return str(self.ipc_dir / "k")

    @property
    def connection_file(self) -> Path:
        return self.kernel_dir / "connection.json"

    @property
    def log_file(self) -> Path:
        return self.kernel_dir / "kernel.log"

    @property
    def stage_dir(self) -> Path:
        return self.kernel_dir / "mnt"

    @property
    def packages_dir(self) -> Path:
        """Bound read-only at ``/opt/packages``; the server installs the session's packages."""
        return self.kernel_dir / "packages"


def sandbox_uid(kernel_id: str, base: int, span: int) -> int:
    """A host uid for this kernel: stable across its restarts, distinct from its neighbours'.

    One uid per kernel keeps ``RLIMIT_NPROC`` (counted per uid) a per-kernel limit.
    """
    return base + zlib.crc32(kernel_id.encode()) % span


def traversable(path: Path) -> bool:
    """Whether any uid may reach ``path`` (every ancestor searchable by others)."""
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
        except OSError:
            return False
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return False
    return True


def python_dirs(executable: str) -> list[Path]:
    """The directories a Python needs to run: its (virtual) environment and its base install."""
    dirs: list[Path] = []
    for exe in (Path(executable), Path(os.path.realpath(executable))):
        prefix = exe.parent.parent
        is_env = (prefix / "pyvenv.cfg").exists() or any((prefix / "lib").glob("python3*"))
        if prefix == Path("/"):
            raise ValueError(
                f"{executable} lives at the root of the filesystem; binding its environment "
                "would expose the whole host: use a Python installed in /usr or a virtualenv"
            )
        if is_env and prefix not in dirs and not _under(prefix, Path("/usr")):
            dirs.append(prefix)
    if not dirs and not _under(Path(os.path.realpath(executable)), Path("/usr")):
        raise ValueError(
            f"cannot tell which Python environment {executable} belongs to; "
            "list its directories in BubblewrapProvisioner.ro_binds"
        )
    return dirs


def bwrap_args(
    layout: Layout,
    argv: list[str],
    env: dict[str, str],
    ro_binds: list[Path],
    limits: Limits,
    connection_fd: int,
    stage: dict[Path, Path],
) -> list[str]:
    """The bwrap options (passed with ``--args FD``) that run ``argv`` inside the sandbox."""

    def src(path: Path) -> str:
        return str(stage.get(path, path))

    args = [
        "--unshare-all", "--unshare-user", "--disable-userns",
        "--die-with-parent", "--new-session",
        "--uid", str(INNER_UID), "--gid", str(INNER_UID), "--hostname", "sandbox",
        "--ro-bind", "/usr", "/usr",
    ]  # fmt: skip
    for name in USR_MERGED:
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    for name in HOST_ETC_FILES:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for name in ETC_FILES:
        args += ["--ro-bind", str(layout.runtime_root / "etc" / name), f"/etc/{name}"]
    args += [
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(limits.tmp_size), "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",
        "--size", str(limits.tmp_size), "--tmpfs", "/tmp",
        "--size", str(limits.tmp_size), "--perms", "0700", "--tmpfs", INNER_HOME,
    ]  # fmt: skip
    for path in ro_binds:
        args += ["--ro-bind", src(path), str(path)]
    args += [
        "--bind", src(layout.workspace), INNER_WORKSPACE,
        "--ro-bind", str(layout.packages_dir), INNER_PACKAGES,
        "--bind", str(layout.ipc_dir), INNER_IPC_DIR,
        "--perms", "0400", "--ro-bind-data", str(connection_fd), INNER_CONNECTION_FILE,
        "--remount-ro", "/",
        "--chdir", INNER_WORKSPACE,
        "--clearenv",
    ]  # fmt: skip
    for key, value in env.items():
        args += ["--setenv", key, value]
    return [*args, "--", *argv]


def inner_env(python_bin: Path, extra: dict[str, str]) -> dict[str, str]:
    """The kernel's whole environment: nothing of the server's crosses unless named in ``extra``."""
    env = {
        "PATH": f"{python_bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": INNER_HOME,
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "SHELL": "/bin/sh",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        # ipykernel exits when its parent pid vanishes; inside the PID namespace the parent is
        # always pid 1, so "1" turns that poller off (bwrap --die-with-parent does its job).
        "JPY_PARENT_PID": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "KERNELAGENT_PACKAGES": INNER_PACKAGES,
    }
    env.update(extra)
    return env


# Armed first thing in the child: killed when the server dies. If the server died before it was
# armed, the parent is no longer the server: give up at once (a kernel must not outlive it).
DIE_WITH_SERVER = 'test "$PPID" = "$0" || exit 1; exec "$@"'


def launch_argv(
    layout: Layout,
    bwrap: str,
    args_fd: int,
    limits: Limits,
    cgroup_procs: list[str],
    stage: dict[Path, Path],
    argv: list[str],
    server_pid: int,
) -> list[str]:
    """The host command: tied to the server's life, staging and privilege drop (as root),
    rlimits, then bwrap."""
    guard = [
        "setpriv", "--pdeathsig", "SIGKILL", "--",
        "/bin/sh", "-c", DIE_WITH_SERVER, str(server_pid),
    ]  # fmt: skip
    sandbox = [bwrap, "--args", str(args_fd), "--", *argv]
    prlimit = ["prlimit", *limits.prlimit_args(), "--"]
    if layout.host_uid is None:
        return [*guard, *prlimit, *sandbox]
    uid = str(layout.host_uid)
    setpriv = [
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        # a change of uid clears the parent-death signal the server armed: arm it again
        "--pdeathsig", "SIGKILL", "--",
    ]  # fmt: skip
    steps: list[str] = []
    for procs in cgroup_procs:
        steps += ["cgroup", procs]
    for source, target in stage.items():
        steps += ["bind", str(source), str(target)]
    return [
        *guard,
        "unshare", "--mount", "--propagation", "private", "--",
        "/bin/sh", "-c", STAGE_SCRIPT, "kernelagent-launch", *steps, "--",
        *prlimit, *setpriv, *sandbox,
    ]  # fmt: skip


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
