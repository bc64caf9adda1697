"""Schemathesis against the served OpenAPI document: generated requests, valid and not, for
every operation (bounded examples), and no answer may be a 5xx or differ from the document
(status, content type, headers, body schema, 405 with ``Allow``)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from conftest import running
from test_agent import agent_settings, llm  # noqa: F401 - the llm fixture

pytestmark = pytest.mark.sandbox

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance,unsupported_method"
)


@pytest.fixture(params=["embedded"])
async def server(request, tmp_path, unused_port, llm):  # noqa: F811
    async with running(agent_settings(request, tmp_path, unused_port, llm)) as s:
        yield s


@pytest.mark.timeout(300)
async def test_no_generated_request_gets_a_5xx_or_an_undocumented_answer(server, tmp_path):
    st = Path(sys.executable).parent / "st"
    process = await asyncio.create_subprocess_exec(
        str(st), "run", f"{server.base}/api/v1/openapi.json",
        "-H", f"Authorization: token {server.token}",
        "--checks", CHECKS, "--max-examples", "4", "--workers", "2", "--seed", "1",
        "--request-timeout", "60", "--max-time", "60",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[-6000:]
    assert "Tested:" in report
