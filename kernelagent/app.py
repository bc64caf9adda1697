"""Composition root: adapters → services → tornado Application, started and stopped in order.

Example::

    app = KernelAgentApp(Settings.from_env(os.environ))
    await app.start()            # database migrated, kernel pool filling, HTTP listening
    token = await app.owner_token()
    ...
    await app.stop()             # HTTP closed, notebooks flushed, kernels shut down
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tornado import httpserver, web

from kernelagent.adapters import redis_pools
from kernelagent.adapters.db import open_database
from kernelagent.adapters.events import make_events
from kernelagent.adapters.kernel_state import KernelState
from kernelagent.adapters.kernels import LocalKernels
from kernelagent.adapters.llm import OpenAIChat
from kernelagent.adapters.locks import make_locks
from kernelagent.adapters.memory import memory_free
from kernelagent.adapters.package_cache import PackageCache
from kernelagent.adapters.remote_kernels import RemoteKernels
from kernelagent.adapters.runtime import make_runtime
from kernelagent.adapters.storage import FsspecStorage
from kernelagent.config import Settings
from kernelagent.metrics import Metrics
from kernelagent.services.agent import AgentLimits, AgentService, parse_prices
from kernelagent.services.auth import AuthService
from kernelagent.services.bridge import GatewayService
from kernelagent.services.execution import ExecutionService
from kernelagent.services.files import FileService
from kernelagent.services.kernels import KernelPool
from kernelagent.services.namespaces import NamespaceSnapshots
from kernelagent.services.notebook_store import NotebookStore
from kernelagent.services.output_views import KERNEL_SETUP_CODE
from kernelagent.services.packages import PackagePolicy, PackageService
from kernelagent.services.ports import Database, EventLog, RuntimeState, SessionLocks, Storage
from kernelagent.services.rates import RequestRate
from kernelagent.services.readiness import Readiness
from kernelagent.services.recording import Recorder
from kernelagent.services.replay import Replayer
from kernelagent.services.sessions import SessionService
from kernelagent.services.supervisor import KernelSupervisor
from kernelagent.services.turns import TurnService
from kernelagent.services.worldlines import WorldlineService
from kernelagent.web.mcp import KernelagentMcp, build_mcp
from kernelagent.web.mcp import serve as serve_mcp
from kernelagent.web.routes import routes

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Services:
    """The object graph, built once in ``KernelAgentApp.start``."""

    settings: Settings
    db: Database
    storage: Storage
    locks: SessionLocks
    state: RuntimeState
    kernels: LocalKernels | RemoteKernels
    pool: KernelPool
    auth: AuthService
    recorder: Recorder
    files: FileService
    sessions: SessionService
    supervisor: KernelSupervisor
    execution: ExecutionService
    notebooks: NotebookStore
    gateway: GatewayService
    events: EventLog
    agent: AgentService
    turns: TurnService
    worldlines: WorldlineService
    readiness: Readiness
    metrics: Metrics
    rate: RequestRate
    mcp: Any = None  # the MCP server's ASGI callable (``web/mcp.py``), set once built


class KernelAgentApp:
    """Owns every long-lived object of one server process."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.services: Services | None = None
        self.web: web.Application | None = None
        self.http: httpserver.HTTPServer | None = None
        self._chores: list[asyncio.Task[None]] = []  # what runs every so often (_every)
        self._mcp: KernelagentMcp | None = None
        self._mcp_task: asyncio.Task[None] | None = None

    async def start(self, listen: bool = True) -> Services:
        settings = self.settings
        if settings.unsafe_no_sandbox:
            log.warning(
                "!!! --unsafe-no-sandbox: kernels run as %s with full access to this machine, "
                "its network and its secrets. Never expose this server. !!!",
                getpass.getuser(),
            )
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = await open_database(settings.database)
        storage = FsspecStorage(settings.storage, endpoint_url=settings.s3_endpoint_url or None)
        # a crashed process's session locks free themselves as soon as it counts as gone
        locks = make_locks(settings.redis_url or None, ttl=settings.process_lease)
        events = make_events(settings.redis_url or None, settings.events_retention)
        state = make_runtime(settings.redis_url or None, settings.process_lease)
        await state.start(settings.advertised_url)
        kernels: LocalKernels | RemoteKernels
        if settings.gateway_url:
            kernels = RemoteKernels(settings)
        else:
            kernels = LocalKernels(settings)
            kernels.clear_scratch()
        pool = KernelPool(
            kernels,
            size=settings.pool_size,
            most=settings.pool_max,
            preimport=[m.strip() for m in settings.pool_preimport.split(",") if m.strip()],
            free_memory=memory_free,
        )
        secret = settings.secret or _stored_secret(settings.data_dir)
        recorder = Recorder(db, locks, events)
        files = FileService(
            db,
            storage,
            kernels,
            recorder,
            secret=secret,
            upload_limit=settings.upload_limit,
            signed_url_ttl=settings.signed_url_ttl,
            workspace_limit=settings.workspace_limit,
        )
        replayer = Replayer(kernels, files, settings.cell_timeout, settings.stream_limit)
        namespaces = NamespaceSnapshots(
            db,
            storage,
            KernelState(kernels.execute),
            enabled=settings.state_snapshots,
            cell_seconds=settings.state_cell_seconds,
            limit=settings.state_limit,
        )
        package_policy = PackagePolicy.of(
            settings.packages,
            settings.package_allowlist,
            settings.package_denylist,
            settings.package_size_limit,
            settings.package_timeout,
        )
        packages = PackageService(
            kernels,
            PackageCache(
                settings.data_dir / "packages",
                index_url=settings.package_index_url,
                builds=settings.package_builds,
            ),
            package_policy,
        )
        supervisor = KernelSupervisor(
            db,
            locks,
            kernels,
            pool,
            files,
            recorder,
            replayer,
            state,
            namespaces,
            KERNEL_SETUP_CODE,
            max_kernels_per_user=settings.max_kernels_per_user,
            max_kernels=settings.max_kernels,
            packages=packages,
        )
        sessions = SessionService(db, pool, kernels, files, storage, state, events, supervisor)
        execution = ExecutionService(
            db,
            locks,
            kernels,
            supervisor,
            recorder,
            files,
            state,
            namespaces,
            default_timeout=settings.cell_timeout,
            stream_limit=settings.stream_limit,
            packages=packages,
        )
        llm = None
        if settings.llm_configured:
            llm = OpenAIChat(
                settings.openai_api_key,
                settings.openai_base_url,
                timeout=settings.llm_timeout,
                retries=settings.llm_retries,
            )
        agent = AgentService(
            db,
            sessions,
            execution,
            files,
            recorder,
            state,
            llm,
            default_model=settings.model,
            limits=AgentLimits(
                max_steps=settings.agent_max_steps,
                turn_timeout=settings.agent_turn_timeout,
                token_budget=settings.agent_token_budget,
                tool_result_chars=settings.tool_result_chars,
                history_tokens=settings.history_tokens,
                cell_timeout=settings.cell_timeout,
                memory_limit=settings.memory_limit,
                vision=settings.vision,
                packages=package_policy.says(),
            ),
            prices=parse_prices(settings.prices),
        )
        turns = TurnService(db, sessions, agent, recorder, state, supervisor)
        metrics = Metrics(
            lambda: {
                "in_use": max(kernels.running() - pool.ready_count - pool.starting, 0),
                "pooled": pool.ready_count,
                "starting": pool.starting,
            }
        )
        metrics.pool_target.set_function(lambda: pool.target)
        recorder.observers.append(metrics.observe_event)
        execution.observe_lock_wait = metrics.lock_wait.observe
        await turns.start_recovery(every=settings.process_lease)
        self.services = Services(
            settings=settings,
            db=db,
            storage=storage,
            locks=locks,
            state=state,
            kernels=kernels,
            pool=pool,
            auth=AuthService(db),
            recorder=recorder,
            files=files,
            sessions=sessions,
            supervisor=supervisor,
            execution=execution,
            notebooks=NotebookStore(db, storage),
            gateway=GatewayService(sessions, execution, supervisor, kernels, state),
            events=events,
            agent=agent,
            turns=turns,
            worldlines=WorldlineService(
                db,
                locks,
                sessions,
                supervisor,
                files,
                events,
                replayer,
                import_limit=settings.import_limit,
                import_cells=settings.import_cells,
            ),
            readiness=Readiness(db, state, storage),
            metrics=metrics,
            rate=RequestRate(state, settings.rate_limit),
        )
        await pool.start()
        self._mcp = build_mcp(self.services)
        self.services.mcp = serve_mcp(self._mcp)
        running = asyncio.get_running_loop().create_future()
        self._mcp_task = asyncio.create_task(self._run_mcp(self._mcp, running), name="mcp")
        await running
        if settings.kernel_idle_ttl > 0:  # idle kernels shut down (their sessions stay)
            ttl = settings.kernel_idle_ttl
            self._every(min(60.0, ttl / 4), lambda: supervisor.cull_idle(ttl), "culling")
        if settings.redis_url:
            self._every(redis_pools.IDLE_SECONDS, redis_pools.close_idle, "closing Redis sockets")
        sandbox = "none (unsafe)" if settings.unsafe_no_sandbox else settings.sandbox
        if settings.gateway_url:
            sandbox = f"the gateway's ({settings.gateway_url})"
        self.web = _Application(
            metrics,
            routes(self.services, sandbox),
            cookie_secret=secret,
            xsrf_cookies=True,
            xsrf_cookie_kwargs={"samesite": "Strict", "httponly": False},
        )
        await self.owner_token()  # before listening: ready means its users' tokens work
        if listen:
            self.http = self.web.listen(
                settings.port,
                settings.host,
                max_body_size=settings.upload_limit + 1024 * 1024,
            )
        return self.services

    async def owner_token(self) -> str:
        """The first user's token: ``KERNELAGENT_TOKEN``, or one made (and kept) on first start."""
        assert self.services
        auth, settings = self.services.auth, self.settings
        token_file = settings.data_dir / "owner-token"
        if settings.token:
            if await auth.authenticate(settings.token) is None:
                users = await self.services.db.users.list()
                try:
                    name = f"owner-{len(users) + 1}" if users else "owner"
                    await auth.add_user(name, settings.token)
                except Exception:
                    # replicas starting together: another one may have just added it
                    if await auth.authenticate(settings.token) is None:
                        raise
            return settings.token
        if token_file.exists():
            token = token_file.read_text().strip()
            if await auth.authenticate(token):
                return token
        existing = await self.services.db.users.list()
        _, token = await auth.add_user(f"owner-{secrets.token_hex(3)}" if existing else "owner")
        _write_private(token_file, token)
        return token

    @staticmethod
    async def _run_mcp(server: KernelagentMcp, running: asyncio.Future[None]) -> None:
        """The MCP SDK's session manager, entered and left in this one task (anyio's rule)."""
        async with server.session_manager.run():
            running.set_result(None)
            await asyncio.Event().wait()  # until cancelled by stop()

    def _every(self, seconds: float, job: Callable[[], Awaitable[object]], what: str) -> None:
        """Run ``job`` every ``seconds`` until ``stop`` (a failure is logged; the next run
        comes all the same)."""

        async def chore() -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    await job()
                except Exception:
                    log.exception("%s failed", what)

        self._chores.append(asyncio.create_task(chore(), name=what))

    async def stop(self) -> None:
        """Drain, then close: readiness turns 503 (a load balancer sends new requests
        elsewhere), new turns are refused, the turns running here get up to the drain timeout
        to finish; then HTTP closes (SSE clients reconnect elsewhere) and the rest stops. With
        Redis (several processes), kernels on a gateway are left running for the process that
        serves their sessions next."""
        if self.services:
            self.services.readiness.draining = True
            await self.services.agent.drain(self.settings.drain_timeout)
        for chore in self._chores:
            chore.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)
        if self.http:
            self.http.stop()
            await self.http.close_all_connections()
        if self._mcp is not None:
            for task in list(self._mcp.running):  # cells MCP callers stopped waiting for
                task.cancel()
            await asyncio.gather(*self._mcp.running, return_exceptions=True)
        if self._mcp_task is not None:
            self._mcp_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mcp_task
        if self.services:
            s = self.services
            await s.turns.stop()
            await s.agent.stop()
            await s.worldlines.stop()
            await s.supervisor.namespaces.stop()
            await s.gateway.stop(self.settings.drain_timeout)
            await s.notebooks.stop()
            await s.pool.stop()
            await s.kernels.close(keep=bool(self.settings.redis_url))
            await s.state.close()
            await s.locks.close()
            await s.events.close()
            await s.db.close()


class _Application(web.Application):
    """Each request, once logged, is counted in the metrics (by handler class: a bounded set)."""

    def __init__(self, metrics: Metrics, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    def log_request(self, handler: web.RequestHandler) -> None:
        super().log_request(handler)
        self.metrics.observe_request(
            type(handler).__name__,
            handler.request.method or "",
            handler.get_status(),
            handler.request.request_time(),
        )


def _stored_secret(data_dir: Path) -> str:
    """The signing key kept in the data dir (made once), so signed URLs survive restarts."""
    path = data_dir / "secret"
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
