"""``%pip install`` in a session's kernel: the server installs from the index with its own
network into the kernel's read-only package directory; the kernel keeps no network, the shared
environment never changes, and the record brings the same versions back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from conftest import backend_settings, running
from sse import EventStream

from kernelagent.domain import Cell, new_id
from kernelagent.services.packages import lock, pip_lines
from kernelagent.services.prompt import WORKSPACE_PROBE, parse_probe, system_prompt

pytestmark = pytest.mark.sandbox

NAME, VERSION = "inflection", "0.5.1"  # tiny, pure Python, no dependencies
NETWORK_PROBE = """
import socket
for address in [("pypi.org", 443), ("151.101.0.223", 443), ("1.1.1.1", 53)]:
    try:
        socket.create_connection(address, timeout=3)
        print("network: open", address)
    except OSError as e:
        print("network: closed", type(e).__name__)
"""


def text(cell: dict) -> str:
    """Everything a cell showed, streams, values and errors."""
    parts = []
    for output in cell["outputs"]:
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
        if output["output_type"] == "error":
            parts.append(f"{output['ename']}: {output['evalue']}")
    return "".join(parts)


def meta(cell: dict) -> dict:
    return cell["metadata"]["kernelagent"]


def shared_environment_has(name: str) -> bool:
    """Whether the server's own environment (the one bubblewrap kernels run) has ``name``."""
    code = f"import importlib.metadata as m\ntry: m.version({name!r})\nexcept Exception: exit(1)"
    return subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.fixture(params=["embedded", "networked"])
def backend(request, tmp_path, unused_port):
    return lambda **overrides: backend_settings(request, tmp_path, unused_port, **overrides)


def test_pip_lines_are_read_as_ipython_reads_the_cell():
    cell = (
        "import os\n"
        "%pip install -q inflection 'python-slugify>=8'\n"
        "if True:\n"
        "    !pip install humanize\n"
        "!{sys.executable} -m pip install tabulate\n"
        "!python3 -m pip list\n"
        "s = 'pip install nothing'\n"
        "%pip show inflection\n"
    )
    assert pip_lines(cell) == [
        "install -q inflection 'python-slugify>=8'",
        "install humanize",
        "install tabulate",
    ]
    assert pip_lines("x = 1") == [] and pip_lines("%%bash\npip install x\n") == []
    deep = "pip = 1\nx = " + "-" * 50_000 + "1\n"  # never parsed into an AST in the server
    assert pip_lines(deep) == []
    assert pip_lines("get_ipython().system('pip install humanize')") == ["install humanize"]


def test_recorded_versions_that_are_not_a_name_and_version_are_left_out():
    """Package metadata comes from imported notebooks too, and names cache paths."""
    cells = [
        _cell({"NumPy": "1.26.0", "../../etc": "1", "plotly": "5.0/../../x"}),
        _cell({"numpy": "2.0.0"}),
    ]
    assert lock(cells) == {"numpy": "2.0.0"}


def _cell(installed: dict[str, str]) -> Cell:
    return Cell(
        id=new_id(), session_id="s", index=0, cell_type="code", source="", role="web",
        outputs=[], execution_count=None, status="ok", started_at=None, duration_ms=None,
        metadata={"packages": installed},
    )  # fmt: skip


async def test_pip_install_in_a_cell_installs_for_the_session_only(ka_server):
    assert not shared_environment_has(NAME)
    server = ka_server
    sid = (await server.session("pkgs"))["id"]
    first = (await server.run(sid, f"%pip install {NAME}"))["cell"]
    assert meta(first)["status"] == "ok", text(first)
    shown = text(first)
    assert "Resolving inflection" in shown and "Collecting inflection" in shown
    assert f"Successfully installed {NAME}-{VERSION} (for this session)" in shown
    assert meta(first)["packages"] == {NAME: VERSION}

    used = await server.run(sid, f"import {NAME}\n{NAME}.camelize('big_data')")
    assert text(used["cell"]) == "'BigData'"
    where = await server.run(sid, f"{NAME}.__file__")
    assert text(where["cell"]).startswith("'/opt/packages/site/")

    # the kernel still has no network, and cannot write where the packages are
    offline = (await server.run(sid, NETWORK_PROBE))["cell"]
    assert "network: open" not in text(offline), text(offline)
    assert text(offline).count("network: closed") == 3
    readonly = await server.run(sid, "open('/opt/packages/site/x.py', 'w')")
    assert "Read-only file system" in text(readonly["cell"])

    # `!pip` works too, dependencies come along, and what the kernel has is not fetched
    bang = (await server.run(sid, "!pip install python-slugify"))["cell"]
    assert meta(bang)["status"] == "ok", text(bang)
    assert set(meta(bang)["packages"]) == {"python-slugify", "text-unidecode"}
    slug = await server.run(sid, "import slugify\nslugify.slugify('Grüße aus Köln')")
    assert text(slug["cell"]) == "'grusse-aus-koln'"
    again = (await server.run(sid, f"%pip install {NAME} pandas"))["cell"]
    assert "Requirement already satisfied: inflection (0.5.1)" in text(again)
    assert "Requirement already satisfied: pandas" in text(again)
    assert meta(again).get("packages", {}) == {NAME: VERSION}

    # the shared environment and the other sessions are unchanged
    other = (await server.session("other"))["id"]
    missing = await server.run(other, f"import {NAME}")
    assert "ModuleNotFoundError" in text(missing["cell"])
    assert not shared_environment_has(NAME)


async def test_a_kernel_restored_from_its_snapshot_has_its_packages_first(ka_server):
    """A culled kernel's namespace holds an object of an installed package's class: the
    package is back before the namespace is restored (no cell re-run)."""
    sid = (await ka_server.session("restore"))["id"]
    await ka_server.run(sid, "%pip install python-slugify==8.0.4")
    made = await ka_server.run(sid, "import slugify\nslug = slugify.slugify('A B')")
    assert meta(made["cell"])["status"] == "ok", text(made["cell"])
    assert await ka_server.services.supervisor.cull_idle(ttl=0) == [sid]
    back = (await ka_server.run(sid, "slug, slugify.__name__"))["cell"]
    assert text(back) == "('a-b', 'slugify')", text(back)
    notes = [c.source for c in await ka_server.services.db.cells.list(sid) if c.role == "system"]
    assert any("restored from the snapshot" in n and "0 cells re-run" in n for n in notes), notes


async def test_a_second_session_gets_the_package_from_the_cache_without_pip(backend):
    async with running(backend()) as server:
        one, two = (await server.session("one"))["id"], (await server.session("two"))["id"]
        first = (await server.run(one, f"%pip install {NAME}=={VERSION}"))["cell"]
        assert "Collecting" in text(first)
        second = (await server.run(two, f"%pip install {NAME}=={VERSION}"))["cell"]
        assert meta(second)["status"] == "ok" and "Collecting" not in text(second), text(second)
        assert f"Successfully installed {NAME}-{VERSION}" in text(second)
        used = await server.run(two, f"import {NAME}; {NAME}.underscore('BigData')")
        assert text(used["cell"]) == "'big_data'"


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"package_denylist": "requests, inflection"}, "KERNELAGENT_PACKAGE_DENYLIST"),
        ({"packages": "allowlist", "package_allowlist": "humanize"}, "PACKAGE_ALLOWLIST"),
        ({"packages": "off"}, "installing packages is off on this server"),
        ({"package_size_limit": 1000}, "over the limit (KERNELAGENT_PACKAGE_SIZE_LIMIT=1000)"),
        ({"package_timeout": 0.01}, "longer than 0.01 s (KERNELAGENT_PACKAGE_TIMEOUT)"),
    ],
)
async def test_a_refused_install_says_why_in_the_cell(overrides, says, tmp_path, unused_port):
    settings = backend_settings(
        type("R", (), {"param": "embedded"})(), tmp_path, unused_port, **overrides
    )
    async with running(settings) as server:
        sid = (await server.session("refused"))["id"]
        refused = (await server.run(sid, f"%pip install {NAME}\nprint('after')"))["cell"]
        assert meta(refused)["status"] == "error"
        error = refused["outputs"][-1]
        assert error["ename"] == "PackageError" and says in error["evalue"], error
        assert error["traceback"] == [f"PackageError: {error['evalue']}"]
        assert "after" not in text(refused) and "packages" not in meta(refused)


async def test_odd_requests_get_clear_errors(tmp_path, unused_port):
    settings = backend_settings(type("R", (), {"param": "embedded"})(), tmp_path, unused_port)
    async with running(settings) as server:
        sid = (await server.session("odd"))["id"]
        cases = {
            "%pip install -r requirements.txt": "pip install -r is not available here",
            "%pip install git+https://example.org/x.git": "is not a package name",
            "%pip install": "name the packages to install",
            "%pip uninstall -y pandas": "pip uninstall is not available here",
            "%pip install no-such-package-kernelagent-test": "No matching distribution",
            "name = 'inflection'\nget_ipython().run_line_magic('pip', f'install {name}')": (
                "write `%pip install inflection` at the start of a line"
            ),
        }
        for code, says in cases.items():
            cell = (await server.run(sid, code))["cell"]
            assert meta(cell)["status"] == "error" and says in text(cell), (code, text(cell))
        await server.run(sid, f"%pip install {NAME}")
        listed = (await server.run(sid, "%pip list"))["cell"]
        assert "pandas " in text(listed) and f"{NAME} " in text(listed), text(listed)
        frozen = (await server.run(sid, "!pip freeze"))["cell"]
        assert f"{NAME}=={VERSION}" in text(frozen), text(frozen)


async def test_installed_packages_come_back_when_the_kernel_is_rebuilt_by_replay(backend):
    async with running(backend(state_snapshots=False)) as server:
        sid = (await server.session("rebuild"))["id"]
        await server.run(sid, f"%pip install {NAME}")
        made = await server.run(sid, f"import {NAME}\nword = {NAME}.pluralize('notebook')")
        assert await server.services.supervisor.cull_idle(ttl=0) == [sid]
        back = (await server.run(sid, f"word, {NAME}.__version__"))["cell"]
        assert text(back) == f"('notebooks', '{VERSION}')", text(back)
        notebook = await server.json(f"/api/v1/sessions/{sid}/notebook")
        told = json.dumps(notebook)
        assert "rebuilt by replaying" in told or "replaying" in told
        pip_cell = next(c for c in notebook["cells"] if "%pip install" in "".join(c["source"]))
        assert meta(pip_cell)["packages"] == {NAME: VERSION}

        branch = await server.json(
            f"/api/v1/sessions/{sid}/branch", "POST", {"cell_id": made["cell"]["id"]}
        )
        there = (await server.run(branch["id"], f"{NAME}.titleize('data notebooks')"))["cell"]
        assert text(there) == "'Data Notebooks'", text(there)


async def test_the_agent_is_told_it_can_install_and_what_the_session_has(ka_server):
    sid = (await ka_server.session("told"))["id"]
    await ka_server.run(sid, f"%pip install {NAME}")
    probe = parse_probe(await ka_server.services.execution.evaluate(sid, WORKSPACE_PROBE))
    assert probe["packages"] == {NAME: VERSION} and probe["can_install"] is True
    told = system_prompt(probe, 30, 1024**3, "any")
    assert "`%pip install NAME`" in told and "any package from the index" in told
    assert f"Installed in this session with `%pip`: {NAME} {VERSION}." in told
    assert "only humanize" in system_prompt(probe, 30, 1024**3, "only humanize")
    off = system_prompt(probe, 30, 1024**3, "off")
    assert "you cannot `pip install`" in off and "%pip install NAME" not in off
    remote = system_prompt({**probe, "can_install": False}, 30, 1024**3, "any")
    assert "you cannot `pip install`" in remote


async def test_pips_output_streams_into_the_cell_while_it_installs(ka_server):
    sid = (await ka_server.session("stream"))["id"]
    async with EventStream(ka_server.port, f"/api/v1/sessions/{sid}/events", ka_server.token) as s:
        cell = asyncio.create_task(ka_server.run(sid, f"%pip install {NAME}"))
        first = await s.until(lambda e: e.type == "cell.output" and "Resolving" in json.dumps(
            e.data))  # fmt: skip
        kernel = (await ka_server.services.db.sessions.get(sid)).kernel_id
        results = ka_server.services.kernels.package_dir(kernel) / "requests"
        assert not list(results.glob("*.json")), "the output came only once it was over"
        assert first[-1].type == "cell.output"
        answer = await cell
    assert meta(answer["cell"])["status"] == "ok"
    assert list(results.glob("*.json"))
