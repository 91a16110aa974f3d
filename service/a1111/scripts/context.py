"""What a script may know about the server while it plans: no runtime objects, only lookups and values."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.a1111.errors import InvalidRequest


def _random_seed() -> int:
    return random.randrange(4294967294)  # A1111 modules/processing.py: get_fixed_seed


@dataclass(frozen=True)
class ScriptContext:
    is_img2img: bool
    options: Mapping[str, Any] = field(default_factory=dict)  # the job's options (grid colours, return_grid, ...)
    find_checkpoint: Callable[[str], str | None] = lambda name: None  # a name → the checkpoint's title
    upscalers: Sequence[str] = ("None", "Lanczos", "Nearest")  # A1111's shared.sd_upscalers names, in order
    vae_names: Sequence[str] = ()
    checkpoints: Sequence[str] = ()  # checkpoint titles (the choices A1111's checkpoint dropdowns list)
    random_seed: Callable[[], int] = _random_seed
    decode_image: Callable[[Any], Any] | None = None  # an init_images entry → PIL image (the request's limits)
    upscale: Callable[[Any, str, float], Any] | None = None  # (image, upscaler name, scale) → image

    def option(self, key: str, default: Any) -> Any:
        value = self.options.get(key, default)
        return default if value is None else value


def fixed_seed(seed: Any, ctx: ScriptContext) -> int:
    """A1111 `get_fixed_seed`: None, "" and -1 become a random seed."""
    if seed is None or seed == "" or seed == -1:
        return ctx.random_seed()
    try:
        return int(seed)
    except (TypeError, ValueError):
        raise InvalidRequest("seed", f"not a seed: {seed!r}") from None


def bad_arg(script: str, message: str) -> InvalidRequest:
    """A script argument the script cannot use (A1111 fails inside run() with a 500; sdedge refuses it)."""
    return InvalidRequest("script_args", f"{script}: {message}")
