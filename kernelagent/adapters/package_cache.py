"""PackageCache: resolves, downloads and unpacks Python packages for kernels, once per machine.

pip does what pip is for, with the server's network and pip's own configuration (index, proxy,
certificates, constraints): ``pip install --dry-run --report`` resolves against the kernel's
environment (its versions as constraints, so nothing it has is fetched again), and ``pip
download --no-deps`` fetches the wheels that are missing. ``installer`` unpacks each wheel once
into ``unpacked/<wheel>/``; a kernel's ``site/`` is then made of hard links into those trees
(copies across filesystems), so a second session installing the same package runs no pip at
all: resolutions are kept for a day in ``resolved/``.

Nothing here runs in the kernel or changes any environment: the caller chooses the ``site/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from installer import install
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from kernelagent.domain import Package, PythonTarget
from kernelagent.errors import PackageFetchFailed

RESOLUTION_TTL = 24 * 3600.0
Say = Callable[[str], None]


def same_as_here(target: PythonTarget) -> bool:
    """Whether the server's own Python could run the target's wheels (builds allowed)."""
    here = "{}.{}".format(*sys.version_info[:2])
    return target.python == here and target.machine == os.uname().machine


def _fingerprint(target: PythonTarget) -> list[Any]:
    installed = hashlib.sha256(json.dumps(sorted(target.installed.items())).encode())
    return [target.python, target.machine, installed.hexdigest()]


class PackageCache:
    def __init__(self, root: Path, index_url: str = "", builds: bool = False):
        self.root = root
        self.index_url = index_url
        self.builds = builds
        for sub in ("resolved", "wheels", "unpacked"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ resolving

    async def resolve(
        self, specs: list[str], held: dict[str, str], target: PythonTarget, no_deps: bool, say: Say
    ) -> list[Package]:
        """What installing ``specs`` adds to ``target``, the versions in ``held`` kept (the
        target's own, those installed before): nothing the target has already."""
        facts = [sorted(specs), sorted(held.items()), _fingerprint(target)]
        facts += [self.index_url, self.builds, no_deps]
        key = hashlib.sha256(json.dumps(facts).encode()).hexdigest()
        cached = self.root / "resolved" / f"{key}.json"
        with contextlib.suppress(OSError, ValueError):
            if time.time() - cached.stat().st_mtime < RESOLUTION_TTL:
                return [Package(*p) for p in json.loads(cached.read_text())]
        with tempfile.TemporaryDirectory(prefix="resolve-", dir=self.root) as tmp:
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text(
                "".join(
                    f"{name}=={version}\n"
                    for name, version in sorted(held.items())
                    if "+" not in version  # a local build: on no index
                )
            )
            report = Path(tmp) / "report.json"
            args = ["install", "--dry-run", "--ignore-installed", "--report", str(report)]
            args += ["-c", str(constraints), *(["--no-deps"] if no_deps else []), *specs]
            await self._pip(args, target, say)
            found = json.loads(report.read_text()).get("install", [])
        dists = []
        for item in found:
            name = canonicalize_name(item["metadata"]["name"])
            version = str(Version(item["metadata"]["version"]))
            if target.installed.get(name) != version:  # not what the kernel has
                dists.append(Package(name, version))
        _write_atomic(cached, json.dumps([[d.name, d.version] for d in dists]))
        return dists

    # ------------------------------------------------------------------ fetching

    def unpacked(self, dist: Package, target: PythonTarget) -> Path:
        return (
            self.root
            / "unpacked"
            / f"{target.python}-{target.machine}"
            / (f"{dist.name}-{dist.version}")
        )

    async def fetch(self, dists: list[Package], target: PythonTarget, say: Say) -> None:
        """Every one of ``dists`` unpacked in the cache (downloaded first if missing)."""
        missing = [d for d in dists if not self.unpacked(d, target).is_dir()]
        if not missing:
            return
        with tempfile.TemporaryDirectory(prefix="download-", dir=self.root) as tmp:
            specs = [f"{d.name}=={d.version}" for d in missing]
            await self._pip(["download", "-q", "--no-deps", "-d", tmp, *specs], target, say)
            wheels = {_wheel_id(p.name): p for p in Path(tmp).glob("*.whl")}
            for dist in missing:
                wheel = wheels.get((dist.name, dist.version))
                if wheel is None:
                    raise PackageFetchFailed(f"pip fetched no wheel of {dist.name} {dist.version}")
                await asyncio.to_thread(self._unpack, wheel, self.unpacked(dist, target))

    @staticmethod
    def _unpack(wheel: Path, into: Path) -> None:
        """``installer`` lays the wheel out: importable files in ``site/``, the rest beside."""
        into.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=into.parent))
        try:
            scheme = {
                "purelib": str(tmp / "site"),
                "platlib": str(tmp / "site"),
                "headers": str(tmp / "include"),
                "scripts": str(tmp / "bin"),
                "data": str(tmp / "data"),
            }
            destination = SchemeDictionaryDestination(
                scheme,
                interpreter="/usr/bin/env python3",
                script_kind="posix",
                bytecode_optimization_levels=(),
            )
            with WheelFile.open(wheel) as source:
                install(source, destination, {"INSTALLER": b"kernelagent\n"})
            try:
                tmp.rename(into)
            except OSError:  # another session unpacked it first
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ a kernel's site/

    def size(self, dist: Package, target: PythonTarget) -> int:
        tree = self.unpacked(dist, target) / "site"
        return sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())

    def link(self, dist: Package, site: Path, target: PythonTarget) -> None:
        """Make ``dist``'s files appear in ``site`` (hard links; copies across filesystems)."""
        source = self.unpacked(dist, target) / "site"
        for path in sorted(source.rglob("*")):
            target = site / path.relative_to(source)
            if path.is_dir():
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                continue
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
            os.chmod(target, 0o644)

    def unlink(self, dist: Package, site: Path, target: PythonTarget) -> None:
        """Take ``dist``'s files out of ``site`` (an older version being replaced)."""
        source = self.unpacked(dist, target) / "site"
        for path in sorted(source.rglob("*"), reverse=True):
            target = site / path.relative_to(source)
            with contextlib.suppress(OSError):
                target.rmdir() if path.is_dir() else target.unlink()

    # ------------------------------------------------------------------ pip

    async def _pip(self, args: list[str], target: PythonTarget, say: Say) -> None:
        argv = [sys.executable, "-m", "pip", *args, "--no-input", "--disable-pip-version-check"]
        if self.index_url:
            argv += ["--index-url", self.index_url]
        if not self.builds or not same_as_here(target):
            argv += ["--only-binary", ":all:"]
        if not same_as_here(target):
            argv += ["--python-version", target.python, "--implementation", "cp"]
            argv += ["--platform", f"manylinux2014_{target.machine}", "--platform", "any"]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PIP_PROGRESS_BAR": "off", "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        tail: list[str] = []
        try:
            assert process.stdout is not None
            async for raw in process.stdout:
                line = raw.decode(errors="replace")
                tail = [*tail[-9:], line.rstrip()]
                say(line)
            status = await process.wait()
        except BaseException:  # cancelled (a time limit, an interrupt): pip goes too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            await process.wait()
            raise
        if status != 0:
            errors = [t for t in tail if t.startswith("ERROR")] or tail[-3:]
            raise PackageFetchFailed(" ".join(errors) or f"pip exited with status {status}")


def _wheel_id(filename: str) -> tuple[str, str]:
    name, version, _, _ = parse_wheel_filename(filename)
    return canonicalize_name(name), str(Version(str(version)))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
