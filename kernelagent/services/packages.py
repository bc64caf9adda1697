"""PackageService: ``%pip install`` in a cell, done by the server for a kernel with no network.

Before a cell reaches the kernel, ``begin()`` finds its ``pip install`` lines (IPython's own
transformer reads the cell as the kernel will), and starts each install: policy checked, resolved
against the kernel's environment, fetched through the shared ``PackageCache`` and linked into the
kernel's package directory, pip's output written where the kernel's ``pip`` magic shows it
(``kernelside/packages.py`` is the other half). What a cell installed is kept in its metadata
(``packages``: name → version), so a kernel rebuilt from the record (``materialise``) gets exactly
those versions back before any cell is replayed or any namespace restored, and an exported
notebook names them.

Policy (``PackagePolicy``): ``any`` name, only an ``allowlist``, or ``off``; a denylist checked on
everything installed (dependencies too); a size limit per kernel; a time limit per install.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidName, canonicalize_name
from packaging.version import InvalidVersion, Version

from kernelagent.domain import Cell, Package, PythonTarget
from kernelagent.errors import PackageFetchFailed
from kernelagent.kernelside import packages as kernelside
from kernelagent.services.ports import KernelBackend, PackageStore
from kernelagent.services.running import evaluate

log = logging.getLogger(__name__)

KEY = "packages"  # the cell metadata key: what the cell installed, name → version
TARGET_EXPRESSION = f"__import__({kernelside.__name__!r}, fromlist=['_']).environment()"
IGNORED_FLAGS = {"-q", "--quiet", "-v", "--verbose", "--user", "--no-cache-dir",
                 "--disable-pip-version-check", "--no-warn-script-location", "--pre"}  # fmt: skip
UPGRADE_FLAGS = {"-U", "--upgrade", "--force-reinstall"}
_LITERAL = r"""(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")"""
_CALL = re.compile(
    rf"get_ipython\(\)\.(?:run_line_magic\((?P<magic>'pip'|\"pip\"), |(?:system|getoutput)\()"
    rf"(?P<text>{_LITERAL})\)"
)


class Refused(Exception):
    """An install the policy or its arguments do not allow; the message says which."""


@dataclasses.dataclass(frozen=True)
class PackagePolicy:
    mode: str = "any"  # any | allowlist | off
    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()
    size_limit: int = 0  # bytes per kernel; 0 none
    timeout: float = 300.0

    @classmethod
    def of(cls, mode: str, allow: str, deny: str, size_limit: int, timeout: float) -> PackagePolicy:
        """From the settings' text: names separated by commas or spaces."""
        return cls(mode, _names(allow), _names(deny), size_limit, timeout)

    def check_requested(self, name: str) -> None:
        if self.mode == "off":
            raise Refused("installing packages is off on this server (KERNELAGENT_PACKAGES=off)")
        if self.mode == "allowlist" and name not in self.allow:
            raise Refused(
                f"{name} is not on this server's list of packages that may be installed "
                "(KERNELAGENT_PACKAGE_ALLOWLIST)"
            )
        self.check_installed(name)

    def check_installed(self, name: str) -> None:
        if name in self.deny:
            raise Refused(
                f"{name} may not be installed on this server (KERNELAGENT_PACKAGE_DENYLIST)"
            )

    def says(self) -> str:
        """For the agent's system prompt: what it may install."""
        if self.mode == "off":
            return "off"
        if self.mode == "allowlist":
            return "only " + ", ".join(sorted(self.allow))
        return "any"


@dataclasses.dataclass
class Installs:
    """The installs one cell started, run in order in one task."""

    task: asyncio.Task[dict[str, str]]

    async def finish(self) -> dict[str, str]:
        """What the cell installed (name → version); an install still going is stopped."""
        if not self.task.done():
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            return await self.task
        return {}


def pip_lines(code: str) -> list[str]:
    """The ``install …`` arguments of each ``%pip`` / ``!pip`` line of a cell, in order.

    IPython's own transformer turns the cell into Python as the kernel will; its magic and
    shell lines become one call each, read here by pattern (never ``ast`` on a user's code: a
    deeply nested cell must not reach the interpreter's parser in the server)."""
    if "pip" not in code:
        return []
    from IPython.core.inputtransformer2 import TransformerManager

    try:
        python = TransformerManager().transform_cell(code)
    except (SyntaxError, ValueError):
        return []
    found = []
    for match in _CALL.finditer(python):
        text = ast.literal_eval(match["text"])  # one flat string literal
        line = text if match["magic"] else kernelside.pip_args(text)
        if line is not None and line.split()[:1] == ["install"]:
            found.append(line)
    return found


def lock(cells: Sequence[Cell]) -> dict[str, str]:
    """The versions a record's cells installed, the later winning: what its kernel has. An
    imported notebook's metadata names them too, so an entry that is not a valid project name
    and PEP 440 version (they become cache paths) is left out."""
    held: dict[str, str] = {}
    for cell in cells:
        installed = cell.metadata.get(KEY)
        if not isinstance(installed, dict):
            continue
        for name, version in installed.items():
            try:
                held[canonicalize_name(str(name), validate=True)] = str(Version(str(version)))
            except (InvalidName, InvalidVersion):
                log.warning(
                    "ignoring a recorded package %r %r: not a name and version", name, version
                )
    return held


class PackageService:
    def __init__(self, kernels: KernelBackend, cache: PackageStore, policy: PackagePolicy):
        self.kernels = kernels
        self.cache = cache
        self.policy = policy
        self._target: PythonTarget | None = None

    async def begin(self, kernel_id: str, code: str, earlier: Sequence[Cell]) -> Installs | None:
        """Start the installs ``code`` asks for (before the kernel gets the cell): the kernel
        finds their output and result where its ``pip`` magic looks. ``earlier``: the cells
        before it, whose versions are held."""
        lines = pip_lines(code)
        base = self.kernels.package_dir(kernel_id) if lines else None
        if base is None:
            return None  # nothing asked, or a kernel that cannot take packages (it says so)
        requests = base / "requests"
        requests.mkdir(mode=0o755, exist_ok=True)
        files = []
        for line in lines:
            key = kernelside.install_key(line)
            result = requests / f"{key}.json"
            result.unlink(missing_ok=True)
            (requests / f"{key}.log").write_bytes(b"")
            files.append((line, requests / f"{key}.log", result))
        target = await self.target(kernel_id) if self.policy.mode != "off" else None
        return Installs(asyncio.create_task(self._run(base, files, target, lock(earlier))))

    async def target(self, kernel_id: str) -> PythonTarget:
        """The kernel's Python, as it reports itself (once: every kernel has the same)."""
        if self._target is None:
            text = await evaluate(self.kernels, kernel_id, TARGET_EXPRESSION, timeout=30)
            found = json.loads(ast.literal_eval(text))
            self._target = PythonTarget(found["python"], found["machine"], found["installed"])
        return self._target

    async def _run(
        self,
        base: Path,
        files: list[tuple[str, Path, Path]],
        target: PythonTarget | None,
        pins: dict[str, str],
    ) -> dict[str, str]:
        done: dict[str, str] = {}
        for line, log_file, result in files:
            with open(log_file, "a", buffering=1) as out:
                outcome: dict[str, Any]
                try:
                    if target is None:
                        raise Refused(
                            "installing packages is off on this server (KERNELAGENT_PACKAGES=off)"
                        )
                    installed = await asyncio.wait_for(
                        self._install(base, line, target, {**pins, **done}, out.write),
                        self.policy.timeout,
                    )
                    done.update(installed)
                    outcome = {"ok": True, "installed": installed, "message": _summary(installed)}
                except (Refused, PackageFetchFailed) as e:
                    outcome = {"ok": False, "message": str(e)}
                except TimeoutError:
                    outcome = {"ok": False, "message": (
                        f"the install took longer than {self.policy.timeout:g} s "
                        "(KERNELAGENT_PACKAGE_TIMEOUT)")}  # fmt: skip
                except asyncio.CancelledError:
                    _write_json(result, {"ok": False, "message": "the install was stopped"})
                    raise
                except Exception as e:
                    log.exception("installing %r failed", line)
                    outcome = {"ok": False, "message": f"the install failed: {e}"}
            _write_json(result, outcome)
        return done

    async def _install(
        self, base: Path, line: str, target: PythonTarget, pins: dict[str, str], say: Any
    ) -> dict[str, str]:
        """One ``install …`` line: what it added to the kernel (name → version)."""
        specs, upgrade, no_deps = _parse(line)
        requested = {}
        for spec in specs:
            name = canonicalize_name(spec.name)
            self.policy.check_requested(name)
            requested[name] = spec
        have = _read(base / "dists.json")
        held = {**target.installed, **pins, **have}
        for name, spec in requested.items():  # free what the request wants otherwise
            version = held.get(name)
            if upgrade or (version is not None and not spec.specifier.contains(version, True)):
                held.pop(name, None)
        index = self.cache.index_url or "the configured index"
        say(f"Resolving {', '.join(str(s) for s in specs)} from {index} (on the server)…\n")
        dists = await self.cache.resolve([str(s) for s in specs], held, target, no_deps, say)
        dists = [d for d in dists if have.get(d.name) != d.version]
        for dist in dists:
            self.policy.check_installed(dist.name)
        if not dists:
            for name in requested:
                version = have.get(name) or target.installed.get(name, "?")
                say(f"Requirement already satisfied: {name} ({version})\n")
            return {name: have[name] for name in requested if name in have}
        await self.cache.fetch(dists, target, say)
        site = base / "site"
        self._check_size(have, dists, target)
        site.mkdir(mode=0o755, exist_ok=True)
        for dist in dists:
            if dist.name in have:
                await asyncio.to_thread(
                    self.cache.unlink, Package(dist.name, have[dist.name]), site, target
                )
            await asyncio.to_thread(self.cache.link, dist, site, target)
            have[dist.name] = dist.version
        _write_json(base / "dists.json", have)
        _write_json(base / "installed.json", have)
        return {d.name: d.version for d in dists}

    def _check_size(self, have: dict[str, str], new: list[Package], target: PythonTarget) -> None:
        limit = self.policy.size_limit
        if not limit:
            return
        kept = {**have, **{d.name: d.version for d in new}}
        total = sum(self.cache.size(Package(n, v), target) for n, v in kept.items())
        if total > limit:
            raise Refused(
                f"the session's packages would take {total / 1024**2:.0f} MiB, over the limit "
                f"(KERNELAGENT_PACKAGE_SIZE_LIMIT={limit})"
            )

    async def materialise(self, kernel_id: str, cells: Sequence[Cell]) -> None:
        """Give a fresh kernel the packages ``cells`` installed, at their recorded versions,
        before any of them is replayed or its namespace restored."""
        wanted = lock(cells)
        base = self.kernels.package_dir(kernel_id) if wanted else None
        if base is None:
            return
        try:
            for name in list(wanted):
                try:
                    self.policy.check_requested(name)
                except Refused as e:
                    log.warning("not reinstalling %s: %s", name, e)
                    wanted.pop(name)
            target = await self.target(kernel_id)
            have = _read(base / "dists.json")
            dists = [Package(n, v) for n, v in wanted.items() if have.get(n) != v]
            await asyncio.wait_for(
                self.cache.fetch(dists, target, lambda _: None), self.policy.timeout
            )
            site = base / "site"
            site.mkdir(mode=0o755, exist_ok=True)
            for dist in dists:
                await asyncio.to_thread(self.cache.link, dist, site, target)
                have[dist.name] = dist.version
            _write_json(base / "dists.json", have)
            _write_json(base / "installed.json", have)
        except Exception:  # the replayed %pip cells then say what is missing
            log.exception("the packages of kernel %s could not be put back", kernel_id)


def _parse(line: str) -> tuple[list[Requirement], bool, bool]:
    """``install …`` → requirements, whether to upgrade, whether without dependencies."""
    try:
        tokens = shlex.split(line)[1:]
    except ValueError as e:
        raise Refused(f"cannot read `pip {line}`: {e}") from None
    specs, upgrade, no_deps = [], False, False
    for token in tokens:
        if token in IGNORED_FLAGS:
            continue
        if token in UPGRADE_FLAGS:
            upgrade = True
        elif token == "--no-deps":
            no_deps = True
        elif token.startswith("-"):
            raise Refused(
                f"pip install {token} is not available here: name packages from the index "
                "(the server chooses the index, requirement files and paths are not read)"
            )
        else:
            try:
                spec = Requirement(token)
            except InvalidRequirement:
                raise Refused(f"{token!r} is not a package name or requirement") from None
            if spec.url:
                raise Refused(f"{token!r}: packages come from the index, not from URLs")
            specs.append(spec)
    if not specs:
        raise Refused("name the packages to install: %pip install NAME")
    return specs, upgrade, no_deps


def _summary(installed: dict[str, str]) -> str:
    if not installed:
        return ""
    names = " ".join(f"{n}-{v}" for n, v in sorted(installed.items()))
    return f"Successfully installed {names} (for this session)"


def _names(text: str) -> frozenset[str]:
    return frozenset(canonicalize_name(n) for n in text.replace(",", " ").split())


def _read(path: Path) -> dict[str, str]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value))
    tmp.chmod(0o644)
    tmp.replace(path)
