"""``%pip install`` in a kernel with no network: the server installs, the kernel shows and imports.

The server reads each cell before the kernel runs it. For every ``%pip install …`` or
``!pip install …`` line (``pip_args`` recognises the spellings people and models type) it starts
the install with its own network, into the kernel's package directory: read-only in the sandbox
at ``$KERNELAGENT_PACKAGES``, with ``site/`` on ``sys.path`` and ``installed.json`` naming what is
there. While the cell runs, the ``pip`` magic here follows ``requests/<key>.log`` (pip's output,
streamed into the cell) until ``requests/<key>.json`` says how it ended.

A ``pip install`` the server did not see in the cell's source (a name in a variable, a call from a
function) succeeds when what it names is installed already, and otherwise says how to write it.
``pip list`` and ``freeze`` are answered here; ``show`` runs pip where the environment has it.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import site
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ENV = "KERNELAGENT_PACKAGES"
_PIP = re.compile(
    r"""^\s*(?:(?:\S*/)?pip3?(?:\.\d+)?           # pip, pip3, /path/pip3.11
        |(?:\S*/)?python[\d.]*\s+-m\s+pip          # python -m pip, /usr/bin/python3 -m pip
        |\{sys\.executable\}\s+-m\s+pip            # {sys.executable} -m pip
        |\$\{?sys\.executable\}?\s+-m\s+pip)       # $sys.executable -m pip
        (?:\s+(?P<args>.*))?$""",
    re.VERBOSE,
)
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


class PackageError(Exception):
    """An install was refused or failed; shown as one line, not a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"PackageError: {self}"]


def pip_args(command: str) -> str | None:
    """The arguments after ``pip`` when ``command`` runs pip ("install x"), else None."""
    match = _PIP.match(command.strip())
    return (match["args"] or "").strip() if match else None


def install_key(args: str) -> str:
    """The name of an install's files: the same for the server and the kernel."""
    return hashlib.sha256(" ".join(args.split()).encode()).hexdigest()[:16]


def requested_names(args: str) -> list[str]:
    """The distribution names an ``install …`` argument list asks for (options skipped)."""
    names = []
    for token in shlex.split(args)[1:]:
        match = _NAME.match(token)
        if match and not token.startswith("-"):
            names.append(_canonical(match[1]))
    return names


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def root() -> Path | None:
    path = os.environ.get(ENV)
    return Path(path) if path else None


def installed() -> dict[str, str]:
    """Name → version of what the server installed for this session."""
    base = root()
    try:
        return dict(json.loads((base / "installed.json").read_text())) if base else {}
    except (OSError, ValueError):
        return {}


def environment() -> str:
    """What the server resolves against (JSON): this Python, its machine, what it has."""
    dists = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            dists[_canonical(name)] = dist.version
    return json.dumps(
        {
            "python": "{}.{}".format(*sys.version_info[:2]),
            "machine": os.uname().machine,
            "installed": dists,
        }
    )


def use_site() -> None:
    """Put the session's ``site/`` first on ``sys.path`` (its ``.pth`` files processed): what
    the session installed on purpose wins over the environment's own version."""
    base = root()
    if base is None:
        return
    path = str(base / "site")
    if path in sys.path:
        importlib.invalidate_caches()
        return
    before = list(sys.path)
    site.addsitedir(path)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
    importlib.invalidate_caches()


def pip(line: str) -> None:
    """The ``%pip`` magic (and ``!pip``): installs through the server; other commands as pip."""
    command = (line.split() or [""])[0]
    if command != "install":
        if command in ("uninstall", "download", "wheel"):
            raise PackageError(f"pip {command} is not available here: the environment is shared")
        _run_pip(line)
        return
    base = root()
    if base is None:
        raise PackageError("this kernel cannot install packages (it has no package directory)")
    key = install_key(line)
    log, result = base / "requests" / f"{key}.log", base / "requests" / f"{key}.json"
    if not log.exists():
        _already(line)
        return
    outcome = _follow(log, result)
    use_site()
    if not outcome.get("ok"):
        raise PackageError(outcome.get("message") or "the install failed")
    if outcome.get("message"):
        print(outcome["message"])
    stale = sorted(
        name for name in outcome.get("installed", {}) if name.replace("-", "_") in sys.modules
    )
    if stale:
        print(
            f"Note: {', '.join(stale)} was imported before this install; restart the kernel "
            "to use the version just installed."
        )


def _follow(log: Path, result: Path) -> dict[str, Any]:
    """Print the install's output as it grows until its result is written."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with open(log, "rb") as stream:
        while True:
            done = result.exists()
            chunk = decoder.decode(stream.read(), final=done)
            if chunk:
                sys.stdout.write(chunk)
                sys.stdout.flush()
            if done:
                return dict(json.loads(result.read_text()))
            time.sleep(0.05)


def _already(line: str) -> None:
    """An install the server did not see: fine when everything it names is here already."""
    names = requested_names(line)
    have = installed()
    missing = []
    for name in names:
        version = have.get(name)
        if version is None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                missing.append(name)
                continue
        print(f"Requirement already satisfied: {name} ({version})")
    if missing or not names:
        raise PackageError(
            "packages are installed by the server, which reads them in the cell's source: write "
            f"`%pip install {' '.join(missing) or 'NAME'}` at the start of a line of the cell"
        )
    use_site()


def _run_pip(line: str) -> None:
    """``list`` and ``freeze`` answered here (a kernel image may have no pip); the rest by pip."""
    command = line.split()[0]
    if command in ("list", "freeze"):
        dists = {**json.loads(environment())["installed"], **installed()}
        for name, version in sorted(dists.items()):
            print(f"{name}=={version}" if command == "freeze" else f"{name:<32} {version}")
        return
    if importlib.util.find_spec("pip") is None:
        raise PackageError(f"pip {command} is not available in this kernel's environment")
    done = subprocess.run(
        [sys.executable, "-m", "pip", *shlex.split(line), "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)


def register(ipython: Any) -> None:
    """``%pip`` runs ``pip``; ``!pip …`` (and ``!python -m pip …``) too. Names are taken as
    written (no ``{var}`` expansion), as the server read them."""
    from IPython.core.magic import no_var_expand

    original = ipython.system

    def system(command: str) -> Any:
        args = pip_args(command)
        if args is None:
            return original(command)
        return pip(args)

    ipython._kernelagent_system = original
    ipython.system = system
    ipython.register_magic_function(no_var_expand(pip), "line", "pip")
    use_site()


def unregister(ipython: Any) -> None:
    original = getattr(ipython, "_kernelagent_system", None)
    if original is not None:
        ipython.system = original
