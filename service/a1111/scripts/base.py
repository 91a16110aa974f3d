"""What a selectable script is to the runtime: pure functions from (request, positional args) to a plan of
sub-requests and a combiner (A1111 modules/scripts.py: Script.run, which calls process_images once per cell).

The runtime (service/runtime/script_jobs.py) plans every sub-request like a request of its own, runs them in
ONE job (one queue slot, one progress, one interrupt: A1111 runs a script inside one generation task), and
hands the runs to `combine`, which lays out the response images and infotexts as the script returns them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from service.a1111.sdapi_models import GenerationRequest


@dataclass(frozen=True)
class ScriptArg:
    """One UI control of a script as /sdapi/v1/script-info lists it (A1111 modules/api/models.py: ScriptArg)."""

    label: str = ""
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: tuple[str, ...] | None = None

    def info(self) -> dict[str, Any]:
        return {"label": self.label, "value": self.value, "minimum": self.minimum, "maximum": self.maximum,
                "step": self.step, "choices": list(self.choices) if self.choices is not None else None}


@dataclass(frozen=True)
class SubRequest:
    """One process_images call of a script: the request it runs, and the entries the script put in
    `p.extra_generation_params` before it (written into its infotexts before `Version`)."""

    request: GenerationRequest
    extra_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class CellRun:
    """A sub-request as it ran: its images (PIL, before encoding), their infotexts, the per-image prompts and
    seeds, and `infotext_with(extra, index)`, the infotext of image `index` with more extra parameters (the
    X/Y/Z plot writes its grid's infotext from the first cell's this way)."""

    sub: SubRequest
    images: list[Image.Image]
    infotexts: list[str]
    prompts: list[str]
    negative_prompts: list[str]
    seeds: list[int]
    subseeds: list[int]
    infotext_with: Callable[[dict[str, Any], int], str]
    index: int = 0  # position among the script's runs


@dataclass
class ScriptOutput:
    """What the script returns (A1111's `Processed` of the script): images in response order, each with the
    infotext its PNG carries (None: no `parameters` chunk, as A1111's grids), and the `info` fields the script
    sets. `template` is the run whose `info` the rest comes from (A1111 copies a cell's Processed)."""

    images: list[Image.Image]
    png_infotexts: list[str | None]
    infotexts: list[str]
    index_of_first_image: int = 0
    all_prompts: list[str] | None = None
    all_seeds: list[int] | None = None
    all_negative_prompts: list[str] | None = None
    all_subseeds: list[int] | None = None
    seed: int | None = None
    template: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # further `info` keys to set
    # X/Y/Z with a Z axis: (sub-grid, its infotext, prompt, seed), saved beside the plot even when the response
    # drops them (A1111 xyz_grid.py run(): grid_save)
    sub_grids: list[tuple[Image.Image, str | None, str | None, int | None]] = field(default_factory=list)


Combine = Callable[[Sequence[CellRun]], ScriptOutput]
# Loopback's next request depends on the previous image: given the runs so far, the next sub-request or None.
Follow = Callable[[Sequence[CellRun]], SubRequest | None]


@dataclass
class ScriptPlan:
    """A script's work: `requests` are known before anything runs (planned at submit, so a bad one is refused
    before the job queues); `follow`, when set, produces more after them, one at a time, on the worker."""

    requests: list[SubRequest]
    combine: Combine
    follow: Follow | None = None
    job_count: int | None = None  # A1111's state.job_count when it is not the sum of the requests' n_iter


def positional(args: Sequence[Any] | None, defaults: Sequence[ScriptArg]) -> list[Any]:
    """`script_args` as the script's run() receives them; args the request leaves out take the controls'
    defaults (A1111 would shift the argument vector and fail with a TypeError, a 500)."""
    given = list(args or [])
    return given[: len(defaults)] + [d.value for d in defaults[len(given):]]
