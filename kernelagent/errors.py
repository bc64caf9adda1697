"""The one exception tree of kernelagent; services and adapters raise these, never HTTP errors.

::

    KernelAgentError
    ├── InvalidInput      400  malformed request, unsafe path
    ├── Unprocessable     422  well-formed JSON of the wrong shape
    ├── TooLarge          413
    ├── NotFound          404
    ├── Forbidden         403
    ├── Conflict          409
    ├── LimitExceeded     429
    ├── SandboxError      503  the sandbox cannot run here (message: cause and fix)
    ├── NotConfigured     503  a feature needs a setting (message: which one)
    ├── LLMError          502  the LLM endpoint gave no usable reply (message: why, what to set)
    ├── KernelDied        503  a kernel died (message: why, e.g. "out of memory (limit 1 GiB)")
    ├── WorkspaceOffline  409  the workspace lives in a remote kernel that is not running
    ├── PackageFetchFailed 502 pip could not resolve or fetch a package for a kernel
    └── Unavailable       503  a backing service (database, Redis) did not answer: send again

``web/base.py`` maps each to ``{"error": {"code", "message"}}`` with the status above.
"""


class KernelAgentError(Exception):
    """Base of every error kernelagent raises on purpose."""

    status = 500
    code = "internal_error"


class InvalidInput(KernelAgentError):
    status, code = 400, "invalid_input"


class Unprocessable(KernelAgentError):
    status, code = 422, "unprocessable"


class TooLarge(KernelAgentError):
    status, code = 413, "too_large"


class NotFound(KernelAgentError):
    status, code = 404, "not_found"


class Forbidden(KernelAgentError):
    status, code = 403, "forbidden"


class Conflict(KernelAgentError):
    status, code = 409, "conflict"


class LimitExceeded(KernelAgentError):
    status, code = 429, "limit_exceeded"


class Limited(KernelAgentError):
    """A configured limit refuses this; the answer names the setting and its value (and when
    to try again, for a rate)."""

    def __init__(self, message: str, setting: str, value: float, retry_after: float | None = None):
        super().__init__(message)
        self.setting, self.value, self.retry_after = setting, value, retry_after


class LimitReached(Limited, LimitExceeded):
    """Too many at once (kernels) or too often (requests): 429."""


class WorkspaceFull(Limited, TooLarge):
    """The session's workspace would hold more than its limit: 413."""


class TooBig(Limited, TooLarge):
    """An input past a configured size or count (an imported notebook): 413."""


class SandboxError(KernelAgentError):
    status, code = 503, "sandbox_unavailable"


class NotConfigured(KernelAgentError):
    status, code = 503, "not_configured"


class LLMError(KernelAgentError):
    status, code = 502, "llm_failed"


class KernelDied(KernelAgentError):
    """``cause``: "died" (the process is gone: the session needs a new kernel), "restarted"
    (in place, same kernel) or "shutdown" (on purpose)."""

    status, code = 503, "kernel_died"

    def __init__(self, message: str, cause: str = "died"):
        super().__init__(message)
        self.cause = cause


class WorkspaceOffline(KernelAgentError):
    """A workspace that lives in its kernel's filesystem (a remote kernel) while no kernel of it
    runs: its files are what was last mirrored to storage until the next cell brings it back."""

    status, code = 409, "workspace_offline"


class HolderUnreachable(KernelAgentError):
    """The server process holding a session's kernel did not answer a forwarded request (it
    is stopping or gone; once its lease expires, the kernel is rebuilt here)."""

    status, code = 503, "holder_unreachable"


class Draining(KernelAgentError):
    """This server process is shutting down and takes no new turn (a load balancer's retry, or
    the client's, reaches another)."""

    status, code = 503, "draining"


class PackageFetchFailed(KernelAgentError):
    """pip could not resolve or fetch a package; the message is pip's own last words."""

    status, code = 502, "package_fetch_failed"


class Unavailable(KernelAgentError):
    """A backing service (the database, Redis) did not answer or dropped the connection; the
    message names it. Nothing was half-done: the request can be sent again."""

    status, code = 503, "unavailable"
