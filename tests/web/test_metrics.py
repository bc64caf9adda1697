"""``GET /metrics``: what the process did, in Prometheus's text format, behind a token."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from conftest import running
from llm_server import text, tool_call
from prometheus_client.parser import text_string_to_metric_families
from sse import EventStream
from test_agent import agent_settings, ask, ended, llm  # noqa: F401 - the llm fixture

pytestmark = pytest.mark.sandbox


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture(params=["embedded"])
async def server(request, tmp_path, unused_port, llm):  # noqa: F811
    prices = json.dumps({"scripted": [1.0, 2.0]})
    settings = agent_settings(request, tmp_path, unused_port, llm, prices=prices)
    async with running(settings) as s:
        yield s


async def test_cells_turns_tokens_requests_and_kernels_are_counted(server, llm):  # noqa: F811
    before = samples((await server.fetch("/metrics")).body)
    assert not any(name == "kernelagent_cells_total" for name, _ in before)
    session = await server.session()
    cells = f"/api/v1/sessions/{session['id']}/cells"
    await server.json(cells, "POST", {"code": "1 + 1"})
    await server.json(cells, "POST", {"code": "1 / 0"})
    llm.script(
        tool_call("run_python", {"code": "print('hi')"}, usage=(1000, 10)),
        text("done", usage=(1500, 20)),
    )
    stream = EventStream(server.port, f"/api/v1/sessions/{session['id']}/events", server.token)
    async with stream:
        turn_id = await ask(server, session["id"], "say hi")
        during = samples((await server.fetch("/metrics")).body)
        await stream.until(ended(turn_id))
    assert during[("kernelagent_sse_clients", ())] == 1

    after = samples((await server.fetch("/metrics")).body)
    assert after[("kernelagent_cells_total", (("status", "ok"),))] == 2  # one by the agent
    assert after[("kernelagent_cells_total", (("status", "error"),))] == 1
    assert after[("kernelagent_cell_seconds_count", ())] == 3
    assert after[("kernelagent_turns_total", (("outcome", "completed"),))] == 1
    assert after[("kernelagent_turn_steps_count", ())] == 1
    assert after[("kernelagent_turn_steps_sum", ())] == 2
    tokens = "kernelagent_llm_tokens_total"
    assert after[(tokens, (("kind", "prompt"), ("model", "scripted")))] == 2500
    assert after[(tokens, (("kind", "completion"), ("model", "scripted")))] == 30
    cost = after[("kernelagent_llm_cost_dollars_total", (("model", "scripted"),))]
    assert cost == pytest.approx((2500 * 1.0 + 30 * 2.0) / 1e6)
    posted = ("handler", "CellsHandler"), ("method", "POST"), ("status", "200")
    assert after[("kernelagent_http_requests_total", posted)] == 2
    async with asyncio.timeout(5):  # the stream's close reaches the server
        while samples((await server.fetch("/metrics")).body)[("kernelagent_sse_clients", ())]:
            await asyncio.sleep(0.05)
    assert after[("kernelagent_kernels", (("state", "in_use"),))] == 1
    assert after[("kernelagent_kernels", (("state", "starting"),))] == 0
    assert after[("kernelagent_pool_target", ())] == server.app.settings.pool_size
    assert after[("kernelagent_lock_wait_seconds_count", ())] == 3


async def test_metrics_need_a_token(server):
    assert (await server.fetch("/metrics", token=None)).code == 401
    assert (await server.fetch("/metrics", token="wrong")).code == 401
    answer = await server.fetch("/metrics")
    assert answer.code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")


@pytest.fixture(params=["embedded"])
async def scraped(request, tmp_path, unused_port, llm):  # noqa: F811
    settings = agent_settings(request, tmp_path, unused_port, llm, metrics_token="scraper-only")
    async with running(settings) as s:
        yield s


async def test_with_a_metrics_token_only_that_token_scrapes(scraped):
    assert (await scraped.fetch("/metrics")).code == 401  # a user's token is not enough
    assert (await scraped.fetch("/metrics", token=None)).code == 401
    answer = await scraped.fetch(
        "/metrics", token=None, headers={"Authorization": "Bearer scraper-only"}
    )
    assert answer.code == 200
    assert ("kernelagent_sse_clients", ()) in samples(answer.body)


DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "kernelagent.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


async def test_the_grafana_dashboard_asks_only_for_what_the_server_exposes(server):
    exposed = {  # every metric family, with or without samples yet
        family.name: family.type
        for family in text_string_to_metric_families((await server.fetch("/metrics")).body.decode())
    }
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    asked = {name for expr in exprs for name in re.findall(r"kernelagent_[a-z_]+", expr)}
    families = set()
    for name in asked:
        family = next(
            (f for f, t in exposed.items() if name.startswith(f) and
             name[len(f):] in SUFFIXES.get(t, ())), None,
        )  # fmt: skip
        assert family is not None, f"the dashboard asks for {name}, which the server lacks"
        families.add(family)
    # every family the server exposes is on the dashboard (but histograms' creation times)
    shown = {f for f in exposed if f.startswith("kernelagent_") and not f.endswith("_created")}
    assert families == shown, exposed
