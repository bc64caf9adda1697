"""Settings: every option of the server, its environment variable, default and help; read once.

``Settings.from_env(os.environ)`` is called in ``cli.py`` (flags override it there) and the frozen
result is passed down; nothing else reads the environment. Each field's ``help`` names its variable,
and a test checks that the README documents every one.

Example::

    settings = Settings.from_env({"KERNELAGENT_POOL_SIZE": "0"})
    assert settings.pool_size == 0
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs

GiB = 1024**3
MiB = 1024**2
SANDBOXES = {"bubblewrap": "kernelagent-python3", "docker": "kernelagent-python3-docker"}


def _setting(default: Any, env: str, help: str) -> Any:
    metadata = {"env": env, "help": help}
    if callable(default):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("kernelagent"))


@dataclasses.dataclass(frozen=True)
class Settings:
    """The server's configuration. Field metadata: ``env`` (variable) and ``help``."""

    host: str = _setting("127.0.0.1", "KERNELAGENT_HOST", "Interface to listen on")
    port: int = _setting(8888, "KERNELAGENT_PORT", "Port to listen on")
    data_dir: Path = _setting(
        _default_data_dir,
        "KERNELAGENT_DATA_DIR",
        "Holds the database, local storage and workspaces of the embedded default",
    )
    token: str = _setting("", "KERNELAGENT_TOKEN", "Fixes the first user's token")
    database_url: str = _setting(
        "", "KERNELAGENT_DATABASE_URL", "postgresql://… for PostgreSQL; default SQLite in data_dir"
    )
    redis_url: str = _setting(
        "", "KERNELAGENT_REDIS_URL", "redis://… for Redis locks; default in-process"
    )
    storage_url: str = _setting(
        "", "KERNELAGENT_STORAGE_URL", "s3://bucket/prefix for S3; default data_dir/storage"
    )
    s3_endpoint_url: str = _setting(
        "", "KERNELAGENT_S3_ENDPOINT_URL", "S3 endpoint for MinIO, moto, etc."
    )
    secret: str = _setting(
        "", "KERNELAGENT_SECRET", "Key for signed URLs; default a random key kept in data_dir"
    )
    cell_timeout: float = _setting(
        30.0, "KERNELAGENT_CELL_TIMEOUT", "Seconds a cell may run before it is interrupted"
    )
    stream_limit: int = _setting(
        100_000, "KERNELAGENT_STREAM_LIMIT", "Stream characters kept per cell in the notebook"
    )
    upload_limit: int = _setting(100 * MiB, "KERNELAGENT_UPLOAD_LIMIT", "Largest upload, bytes")
    body_limit: int = _setting(
        10 * MiB, "KERNELAGENT_BODY_LIMIT", "Largest JSON request body, bytes"
    )
    signed_url_ttl: int = _setting(
        3600, "KERNELAGENT_SIGNED_URL_TTL", "Seconds an artifact's signed URL stays valid"
    )
    sandbox: str = _setting(
        "bubblewrap",
        "KERNELAGENT_SANDBOX",
        "bubblewrap (a namespace sandbox on this host) or docker (a container per kernel)",
    )
    kernel_image: str = _setting(
        "kernelagent/kernel-python:latest",
        "KERNELAGENT_KERNEL_IMAGE",
        "Image of the Docker sandbox's kernels (built from kernel_images/python)",
    )
    kernel_name: str = _setting(
        "",
        "KERNELAGENT_KERNEL_NAME",
        "Kernelspec that session kernels use; default the sandbox's own",
    )
    unsafe_no_sandbox: bool = _setting(
        False,
        "KERNELAGENT_UNSAFE_NO_SANDBOX",
        "Run kernels without any sandbox (never in production)",
    )
    pool_size: int = _setting(
        2, "KERNELAGENT_POOL_SIZE", "Sandboxed kernels kept started ahead of need; 0 disables"
    )
    pool_max: int = _setting(
        8,
        "KERNELAGENT_POOL_MAX",
        "Most warm kernels the pool grows to while sessions arrive faster than it refills (as "
        "many as arrived in the last minute, while a quarter of memory stays free); "
        "POOL_SIZE or less keeps it fixed",
    )
    pool_preimport: str = _setting(
        "numpy,pandas,matplotlib.pyplot,plotly.graph_objects,plotly.express",
        "KERNELAGENT_POOL_PREIMPORT",
        "Modules pooled kernels import in the background (comma separated)",
    )
    runtime_dir: str = _setting(
        "", "KERNELAGENT_RUNTIME_DIR", "Kernel sockets and per-kernel files (short path)"
    )
    memory_limit: int = _setting(1 * GiB, "KERNELAGENT_MEMORY_LIMIT", "Kernel memory, bytes")
    process_limit: int = _setting(128, "KERNELAGENT_PROCESS_LIMIT", "Kernel processes+threads")
    open_files_limit: int = _setting(256, "KERNELAGENT_OPEN_FILES_LIMIT", "Open files per process")
    file_size_limit: int = _setting(1 * GiB, "KERNELAGENT_FILE_SIZE_LIMIT", "Largest file, bytes")
    cpu_time_limit: int = _setting(
        3600, "KERNELAGENT_CPU_TIME_LIMIT", "CPU seconds per kernel process (RLIMIT_CPU)"
    )
    cpu_limit: float = _setting(
        1.0, "KERNELAGENT_CPU_LIMIT", "CPUs a Docker kernel may use (--cpus); 0 no limit"
    )
    tmp_size: int = _setting(64 * MiB, "KERNELAGENT_TMP_SIZE", "Size of the kernel's /tmp, bytes")
    gateway_url: str = _setting(
        "",
        "KERNELAGENT_GATEWAY_URL",
        "A Jupyter Kernel Gateway or Enterprise Gateway: session kernels run there",
    )
    gateway_token: str = _setting(
        "", "KERNELAGENT_GATEWAY_TOKEN", "Token of the gateway (Authorization: token …)"
    )
    gateway_kernel_name: str = _setting(
        "python3", "KERNELAGENT_GATEWAY_KERNEL_NAME", "Kernelspec of session kernels on the gateway"
    )
    gateway_username: str = _setting(
        "kernelagent",
        "KERNELAGENT_GATEWAY_USERNAME",
        "KERNEL_USERNAME sent with each kernel start (Enterprise Gateway's per-user limits)",
    )
    gateway_workspace: str = _setting(
        "",
        "KERNELAGENT_GATEWAY_WORKSPACE",
        "Directory in a remote kernel made its workspace and cwd ({kernel_id} is filled in); "
        "default the kernel's own cwd",
    )
    gateway_request_timeout: float = _setting(
        60.0, "KERNELAGENT_GATEWAY_REQUEST_TIMEOUT", "Seconds a gateway request may take"
    )
    gateway_connect_timeout: float = _setting(
        20.0, "KERNELAGENT_GATEWAY_CONNECT_TIMEOUT", "Seconds to connect to the gateway"
    )
    kernel_start_timeout: float = _setting(
        60.0, "KERNELAGENT_KERNEL_START_TIMEOUT", "Seconds a kernel may take to become ready"
    )
    openai_api_key: str = _setting("", "OPENAI_API_KEY", "Key of the OpenAI-compatible endpoint")
    openai_base_url: str = _setting(
        "", "OPENAI_BASE_URL", "OpenAI-compatible endpoint (vLLM, Ollama, …); default OpenAI"
    )
    model: str = _setting("gpt-4o-mini", "KERNELAGENT_MODEL", "Model a turn uses by default")
    llm_timeout: float = _setting(
        120.0, "KERNELAGENT_LLM_TIMEOUT", "Seconds one LLM request may take"
    )
    llm_retries: int = _setting(
        3, "KERNELAGENT_LLM_RETRIES", "Retries of an LLM request after 429, 5xx or a cut stream"
    )
    agent_max_steps: int = _setting(
        20, "KERNELAGENT_AGENT_MAX_STEPS", "LLM calls one turn may make"
    )
    agent_turn_timeout: float = _setting(
        600.0,
        "KERNELAGENT_AGENT_TURN_TIMEOUT",
        "Seconds a turn may run (waits for the user excluded)",
    )
    agent_token_budget: int = _setting(
        200_000, "KERNELAGENT_AGENT_TOKEN_BUDGET", "Prompt + completion tokens one turn may use"
    )
    tool_result_chars: int = _setting(
        4000, "KERNELAGENT_TOOL_RESULT_CHARS", "Characters of one tool result the model sees"
    )
    history_tokens: int = _setting(
        60_000, "KERNELAGENT_HISTORY_TOKENS", "Estimated tokens of history sent to the model"
    )
    vision: bool = _setting(
        False, "KERNELAGENT_VISION", "Send images to the model (for vision-capable models)"
    )
    prices: str = _setting(
        "",
        "KERNELAGENT_PRICES",
        'JSON {"model": [prompt $/1M tokens, completion $/1M tokens]} for cost per turn',
    )
    kernel_idle_ttl: float = _setting(
        1800.0,
        "KERNELAGENT_KERNEL_IDLE_TTL",
        "Seconds before an idle kernel is shut down (its session stays); 0 never",
    )
    state_snapshots: bool = _setting(
        True,
        "KERNELAGENT_STATE_SNAPSHOTS",
        "Snapshot the namespace after each cell, so branches and kernels that were gone come "
        "back by restore instead of replaying every cell",
    )
    state_cell_seconds: float = _setting(
        2.0, "KERNELAGENT_STATE_CELL_SECONDS", "Longest a namespace snapshot may take, seconds"
    )
    state_limit: int = _setting(
        2 * GiB, "KERNELAGENT_STATE_LIMIT", "Namespace snapshot bytes stored per session"
    )
    events_retention: int = _setting(
        2_000, "KERNELAGENT_EVENTS_RETENTION", "Events kept per session for SSE replay"
    )
    process_lease: float = _setting(
        15.0,
        "KERNELAGENT_PROCESS_LEASE",
        "Seconds after which a server process that stopped answering (with Redis) counts as "
        "gone: its turns fail and its sessions' kernels are rebuilt elsewhere",
    )

    drain_timeout: float = _setting(
        30.0,
        "KERNELAGENT_DRAIN_TIMEOUT",
        "Seconds a stopping server gives its running turns to finish (new ones are refused)",
    )
    workspace_limit: int = _setting(
        1 * GiB,
        "KERNELAGENT_WORKSPACE_LIMIT",
        "Bytes a session's workspace may hold: uploads past it are refused (413), and a cell "
        "that leaves it fuller says so in an error output; 0 no limit",
    )
    import_limit: int = _setting(
        50 * MiB,
        "KERNELAGENT_IMPORT_LIMIT",
        "Bytes of a notebook to import (413 past it, before it is parsed); 0 no limit",
    )
    import_cells: int = _setting(
        10_000,
        "KERNELAGENT_IMPORT_CELLS",
        "Cells of a notebook to import (413 past it); 0 no limit",
    )
    max_kernels_per_user: int = _setting(
        8,
        "KERNELAGENT_MAX_KERNELS_PER_USER",
        "Live session kernels one user may have; at the limit their least recently used idle "
        "one is hibernated to make room (429 when none is idle); 0 no limit",
    )
    max_kernels: int = _setting(
        64,
        "KERNELAGENT_MAX_KERNELS",
        "Live session kernels in all; at the limit the least recently used idle one is "
        "hibernated to make room (429 when none is idle); 0 no limit",
    )
    rate_limit: int = _setting(
        0,
        "KERNELAGENT_RATE_LIMIT",
        "API requests one user may make per minute (429 with Retry-After beyond); 0 no limit",
    )
    mcp_url_uploads: bool = _setting(
        False,
        "KERNELAGENT_MCP_URL_UPLOADS",
        "Whether MCP clients may have the server fetch a URL into a workspace (the server's "
        "network, not the sandbox's)",
    )
    packages: str = _setting(
        "any",
        "KERNELAGENT_PACKAGES",
        "any, allowlist or off: which packages `%pip install` in a session's kernel may install "
        "(the server downloads them; the kernel keeps no network)",
    )
    package_allowlist: str = _setting(
        "", "KERNELAGENT_PACKAGE_ALLOWLIST", "Names (comma or space separated) that may be "
        "installed when KERNELAGENT_PACKAGES=allowlist"
    )  # fmt: skip
    package_denylist: str = _setting(
        "", "KERNELAGENT_PACKAGE_DENYLIST", "Names never installed, dependencies included"
    )
    package_index_url: str = _setting(
        "", "KERNELAGENT_PACKAGE_INDEX_URL", "Index to install from; default pip's own "
        "configuration (the public index unless pip.conf or PIP_INDEX_URL says otherwise)"
    )  # fmt: skip
    package_size_limit: int = _setting(
        2 * GiB, "KERNELAGENT_PACKAGE_SIZE_LIMIT", "Bytes of packages one session may install; "
        "0 no limit"
    )  # fmt: skip
    package_timeout: float = _setting(
        300.0, "KERNELAGENT_PACKAGE_TIMEOUT", "Seconds one `%pip install` may take"
    )
    package_builds: bool = _setting(
        False, "KERNELAGENT_PACKAGE_BUILDS", "Whether packages with no wheel may be built from "
        "source (on the server, with its compilers); default wheels only"
    )  # fmt: skip
    log_format: str = _setting(
        "text",
        "KERNELAGENT_LOG_FORMAT",
        "text, or json: one JSON object per line with request, user, session and turn ids",
    )
    metrics_token: str = _setting(
        "",
        "KERNELAGENT_METRICS_TOKEN",
        "Token for GET /metrics (Prometheus's scraper); without it, any user's token",
    )
    advertise_url: str = _setting(
        "",
        "KERNELAGENT_ADVERTISE_URL",
        "URL at which the other server processes reach this one (requests for the kernels it "
        "holds are forwarded there); default http://<host>:<port>, this machine's address "
        "when listening on all interfaces",
    )

    def __post_init__(self) -> None:
        if self.log_format not in ("text", "json"):
            raise ValueError(f"KERNELAGENT_LOG_FORMAT={self.log_format!r} is not one of text|json")
        if self.packages not in ("any", "allowlist", "off"):
            raise ValueError(
                f"KERNELAGENT_PACKAGES={self.packages!r} is not one of any|allowlist|off"
            )
        if self.sandbox not in SANDBOXES:
            choices = "|".join(SANDBOXES)
            raise ValueError(f"KERNELAGENT_SANDBOX={self.sandbox!r} is not one of {choices}")

    @property
    def kernelspec(self) -> str:
        """The kernelspec session kernels start from: the sandbox's own unless one is named."""
        if self.unsafe_no_sandbox:
            return "python3"
        return self.kernel_name or SANDBOXES[self.sandbox]

    @property
    def advertised_url(self) -> str:
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        host = self.host
        if host in ("", "0.0.0.0", "::"):
            host = socket.gethostbyname(socket.gethostname())
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def llm_configured(self) -> bool:
        return bool(self.openai_api_key or self.openai_base_url)

    @property
    def workspaces_dir(self) -> Path:
        return self.data_dir / "workspaces"

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'kernelagent.db'}"

    @property
    def storage(self) -> str:
        return self.storage_url or str(self.data_dir / "storage")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Settings from ``KERNELAGENT_*`` variables; ``overrides`` (e.g. CLI flags) win."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def provisioner_config(self) -> dict[str, dict[str, Any]]:
        """Traitlets config of the sandbox provisioners (they read no environment themselves)."""
        common: dict[str, Any] = {
            "memory_limit": self.memory_limit,
            "process_limit": self.process_limit,
            "open_files_limit": self.open_files_limit,
            "file_size_limit": self.file_size_limit,
            "cpu_time_limit": self.cpu_time_limit,
            "tmp_size": self.tmp_size,
        }
        if self.runtime_dir:
            common["runtime_dir"] = self.runtime_dir
        return {
            "BubblewrapProvisioner": common,
            "DockerProvisioner": {**common, "image": self.kernel_image, "cpus": self.cpu_limit},
        }


def _parse(field: dataclasses.Field[Any], raw: str) -> Any:
    kind = field.type if isinstance(field.type, str) else field.type.__name__
    try:
        if kind == "bool":
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw).expanduser()
        return raw
    except ValueError:
        raise ValueError(f"{field.metadata['env']}={raw!r} is not a valid {kind}") from None
