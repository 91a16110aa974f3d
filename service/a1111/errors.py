"""The domain exceptions of the semantics and runtime layers: why a request is refused, with no web framework.

Each door maps them itself: the HTTP door to a status code and A1111's error body `{error, detail, body, errors}`
(service/http/errors.py), the gRPC door to a status code (service/rpc/server.py). `detail` is the message both
send; the class name is the body's `error`, except where A1111 itself raises a plain `HTTPException`
(`a1111_error`).
"""

from __future__ import annotations

from engine.memory import GiB


class ServiceError(Exception):
    """A request the service refuses; `detail` is what the client is told."""

    a1111_error: str | None = None  # the body's `error` when A1111 raises a bare HTTPException for this case

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return str(self.detail)


class InvalidRequest(ServiceError):
    """A client's mistake found after schema validation (e.g. width not a multiple of 8): REST 422, gRPC
    INVALID_ARGUMENT; never a 500."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class RequestTooLarge(InvalidRequest):
    """An input over a size limit (an oversized image): REST 413, gRPC INVALID_ARGUMENT."""


class RequestForbidden(InvalidRequest):
    """An input A1111 refuses to fetch (image URLs disabled, a local address): REST 403, gRPC INVALID_ARGUMENT."""


class NotFound(ServiceError):
    """What the request names does not exist (A1111's `HTTPException(404)`, e.g. "Init image not found")."""

    a1111_error = "HTTPException"


class OptionRefused(ServiceError):
    """POST /sdapi/v1/options with an unknown key or a bad value: A1111's `HTTPException(422)`."""

    a1111_error = "HTTPException"


class JobTooLarge(ServiceError):
    """A job that can never fit the memory budget: REST 413, gRPC RESOURCE_EXHAUSTED."""

    def __init__(self, estimate: int, budget: int, what: str):
        super().__init__(
            f"{what} needs an estimated {estimate / GiB:.2f} GiB of memory, more than the server's memory "
            f"budget of {budget / GiB:.2f} GiB (--memory-budget); use a smaller size or batch")
        self.estimate, self.budget = estimate, budget


class QueueBusy(ServiceError):
    """The queue is full: REST 503 with Retry-After, gRPC RESOURCE_EXHAUSTED."""

    retry_after_s = 5


class ShuttingDown(ServiceError):
    """The server is draining after a SIGTERM (service/runtime/drain.py): REST 503 with Retry-After, gRPC
    UNAVAILABLE; the client retries, on another replica or after the restart."""

    retry_after_s = 5


class ModelUnavailable(ServiceError):
    """No checkpoint can be loaded: REST 503, gRPC UNAVAILABLE."""


class JobTimeout(ServiceError):
    """A job ran past its deadline (option `sdedge_job_timeout`, flag `--job-timeout`): REST 504, gRPC
    DEADLINE_EXCEEDED."""

    def __init__(self, job_id: str, seconds: float, abandoned: bool = False):
        how = ("did not stop when interrupted and was abandoned (its worker was replaced)" if abandoned
               else "was interrupted")
        super().__init__(f"job {job_id} exceeded its deadline of {seconds:g} s and {how}")


class JobFailed(RuntimeError):
    """What a job's caller gets when the job raised something that is no ordinary error (a BaseException such as
    SystemExit, an exception whose message cannot be rendered) or its worker died: a plain error to report
    (a 500 / INTERNAL)."""
