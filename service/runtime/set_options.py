"""Setting server options (POST /sdapi/v1/options, gRPC SetOptions): check every value, then apply them all."""

from __future__ import annotations

from typing import Any

from service.a1111.errors import NotFound, OptionRefused
from service.runtime.generate import enqueue
from service.runtime.options import INFO_ONLY, InvalidOption, coerce_option
from service.runtime.state import ServerState

# Read-only in practice: the server sets it when a checkpoint loads; a posted value is ignored.
DERIVED = {"sd_checkpoint_hash"}


def apply_options(state: ServerState, body: dict[str, Any]) -> None:
    """Every value is checked before anything changes; a new `sd_model_checkpoint` is loaded by a job on the
    queue, so the call returns once earlier jobs and the load are done (A1111 blocks the same way).
    Both doors take this path."""
    changes = {k: v for k, v in body.items() if k not in DERIVED and k not in INFO_ONLY}
    checkpoint = changes.pop("sd_model_checkpoint", None)
    entry = None
    if checkpoint is not None:
        entry = state.models.find(str(checkpoint))
        if entry is None:
            raise NotFound(f"model {checkpoint!r} not found")
    unknown = [k for k in changes if k not in state.options.defaults]
    if unknown:
        raise OptionRefused(f"unknown option {unknown[0]!r}")
    try:
        for key, value in changes.items():
            coerce_option(key, value, state.options.defaults[key])
    except InvalidOption as exc:
        raise OptionRefused(str(exc)) from None
    if entry is not None:
        loaded = state.models.loaded
        if loaded is None or loaded[0] != entry or state.options.get("sd_model_checkpoint") != entry.title:
            enqueue(state, state.switch_checkpoint(entry)).future.result()
    state.options.update(changes)
