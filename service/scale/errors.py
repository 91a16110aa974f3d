"""The scale-out's own domain exception; the doors map it like the others (service/http/errors.py)."""

from service.a1111.errors import ShuttingDown


class ReplicaLost(ShuttingDown):
    """The replica holding a job died before answering and the job could not be sent again: REST 503 with
    Retry-After in A1111's error shape (a ShuttingDown: the client retries)."""
