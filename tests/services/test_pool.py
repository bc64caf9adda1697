"""The warm pool hands out ready sandboxed kernels bound to the session's workspace."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from kernelagent.adapters.kernels import LocalKernels
from kernelagent.services.kernels import Demand, KernelPool, preimport_code
from kernelagent.services.running import run_code

pytestmark = pytest.mark.sandbox


async def run(kernels: LocalKernels, kernel_id: str, code: str, reply: dict | None = None) -> str:
    """The cell's stream text and errors, through the kernel port."""
    result = await run_code(kernels, kernel_id, code, timeout=30, stream_limit=100_000)
    if reply is not None:
        reply["execution_count"] = result.execution_count
    texts = []
    for output in result.outputs:
        if output["output_type"] == "stream":
            texts.append(output["text"])
        elif output["output_type"] == "error":
            texts.append(f"{output['ename']}: {output['evalue']}")
    return "".join(texts)


@pytest.fixture(params=["bubblewrap", "docker"])
async def pool_and_kernels(request, settings):
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    settings = dataclasses.replace(settings, pool_size=1, sandbox=request.param)
    kernels = LocalKernels(settings)
    pool = KernelPool(kernels, size=1, preimport=["pandas", "plotly.io"])
    await pool.start()
    try:
        await pool.wait_filled(timeout=90)
        yield pool, kernels
    finally:
        await pool.stop()
        await kernels.close()


async def test_pooled_kernel_gets_the_session_workspace(pool_and_kernels):
    pool, kernels = pool_and_kernels
    pooled = pool._ready[0]
    workspace = kernels.workspace_path("session-1")
    workspace.mkdir(parents=True)
    (workspace / "data.csv").write_text("a,b\n1,2\n")

    kernel = await pool.acquire("session-1")

    assert kernel.id == pooled.id, "the warm kernel was not the one handed out"
    assert kernel.workspace == "session-1"
    out = await run(
        kernels,
        kernel.id,
        "import os; print(os.getcwd(), sorted(os.listdir('.')), open('data.csv').read().split())\n"
        "open('made-inside.txt', 'w').write('hello')",
    )
    assert out.strip() == "/workspace ['data.csv'] ['a,b', '1,2']"
    assert (workspace / "made-inside.txt").read_text() == "hello"
    assert not kernels.workspace_path(pooled.workspace).exists()


async def test_pooled_kernel_imports_in_the_background_with_a_clean_namespace(pool_and_kernels):
    pool, kernels = pool_and_kernels
    kernel = await pool.acquire("s")
    reply: dict = {}
    # at once after hand-out, perhaps while the background imports run: whole modules
    out = await run(
        kernels, kernel.id, "import pandas\nprint(pandas.DataFrame({'a': [1, 2]}).a.sum())", reply
    )
    assert out.strip() == "3"
    assert reply["execution_count"] == 1, "the warm-up must not count as a cell"
    out = await run(
        kernels,
        kernel.id,
        "import sys, threading\n"
        "for t in threading.enumerate():\n"
        "    if t.name == 'kernelagent-preimport':\n"
        "        t.join()\n"
        "print('plotly.io' in sys.modules, "
        "[n for n in dir() if not n.startswith('_') and n not in ('In', 'Out', 'exit', 'quit', "
        "'get_ipython', 'open', 'sys', 'threading', 't', 'pandas')])",
    )
    assert out.strip() == "True []"


async def test_restart_after_hand_out_binds_the_session_workspace(pool_and_kernels):
    pool, kernels = pool_and_kernels
    kernel = await pool.acquire("s2")
    await run(kernels, kernel.id, "open('kept.txt', 'w').write('1'); x = 5")
    await kernels.restart(kernel.id)
    out = await run(kernels, kernel.id, "import os; print(os.listdir('.')); print(x)")
    assert "['kept.txt']" in out
    assert "NameError" in out


async def test_pool_refills_and_falls_back_to_a_cold_start(pool_and_kernels):
    pool, kernels = pool_and_kernels
    first = await pool.acquire("a")
    # the pool is empty now: the next session still gets a kernel, started on demand
    second = await pool.acquire("b")
    assert first.id != second.id
    assert (await run(kernels, second.id, "print(6 * 7)")).strip() == "42"
    await pool.wait_filled(timeout=90)
    assert pool.ready_count == 1


async def test_dead_pooled_kernel_is_not_handed_out(pool_and_kernels):
    pool, kernels = pool_and_kernels
    dead_id = pool._ready[0].id
    await kernels.manager(dead_id).provisioner.kill()
    for _ in range(100):
        if not await kernels.is_alive(dead_id):
            break
        await asyncio.sleep(0.05)
    kernel = await pool.acquire("c")
    assert kernel.id != dead_id
    assert (await run(kernels, kernel.id, "print('alive')")).strip() == "alive"


def test_preimport_code_binds_no_names():
    namespace: dict = {}
    exec(preimport_code(["json", "no_such_module_xyz"]), namespace)
    assert set(namespace) == {"__builtins__"}


async def test_a_hand_out_can_hold_the_refill_back(pool_and_kernels):
    pool, kernels = pool_and_kernels
    kernel = await pool.acquire(".scratch", refill=False)
    # a replacement is ready in ~1 s here (imports go on in the background); none comes while held
    with pytest.raises(TimeoutError):
        await pool.wait_filled(timeout=8)
    assert pool.ready_count == 0
    pool.refill()
    await pool.wait_filled(timeout=90)
    assert pool.ready_count == 1
    await kernels.shutdown(kernel.id, now=True)


def test_demand_is_the_hand_outs_of_the_window_between_base_and_most():
    now = [0.0]
    demand = Demand(base=2, most=5, window=60, clock=lambda: now[0])
    assert demand.wanted() == 2
    for _ in range(4):
        demand.handed_out()
    assert demand.wanted() == 4
    for _ in range(4):
        demand.handed_out()
    assert demand.wanted() == 5  # no more than ``most``
    now[0] = 59.0
    assert demand.wanted() == 5
    now[0] = 60.5  # the window has passed
    assert demand.wanted() == 2
    assert Demand(base=3, most=1).wanted() == 3  # ``most`` below ``base``: fixed


async def test_the_pool_grows_with_arrivals_and_shrinks_when_they_stop(settings):
    kernels = LocalKernels(dataclasses.replace(settings, pool_size=1))
    pool = KernelPool(kernels, size=1, most=3, window=6)
    await pool.start()
    taken = []
    try:
        await pool.wait_filled(timeout=60)
        for name in ("a", "b", "c"):  # three arrivals in the window: three kept warm
            taken.append(await pool.acquire(name))
        assert pool.target == 3
        await pool.wait_filled(timeout=60, count=3)
        warm = {k.id for k in pool._ready}
        assert len(warm) == 3 and kernels.running() == 6
        async with asyncio.timeout(30):  # the arrivals leave the window: back to one
            # a kernel leaves the pool before its shutdown ends: wait for both
            while pool.ready_count > 1 or kernels.running() > 4:
                await asyncio.sleep(0.2)
        assert pool.target == 1
        assert {k.id for k in pool._ready} <= warm
        for gone in warm - {k.id for k in pool._ready}:
            assert not await kernels.is_alive(gone)
    finally:
        for kernel in taken:
            await kernels.shutdown(kernel.id, now=True)
        await pool.stop()
        await kernels.close()


async def test_a_pool_grows_only_while_memory_stays_free(settings):
    kernels = LocalKernels(dataclasses.replace(settings, pool_size=1))
    pool = KernelPool(kernels, size=1, most=3, free_memory=lambda: 0.1)
    await pool.start()
    taken = []
    try:
        await pool.wait_filled(timeout=60)
        for name in ("a", "b", "c"):
            taken.append(await pool.acquire(name))
        assert pool.target == 3
        await pool.wait_filled(timeout=60)  # the base size is kept whatever the memory
        await asyncio.sleep(3)  # time for two more starts, were they allowed
        assert pool.ready_count == 1
    finally:
        for kernel in taken:
            await kernels.shutdown(kernel.id, now=True)
        await pool.stop()
        await kernels.close()
