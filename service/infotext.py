"""A1111's infotext: the `parameters` text written into every image, and its parser (a1111-api.md §7)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

VERSION = "v1.10.1"  # the A1111 version whose infotext we reproduce; clients parse it (see docs/compatibility.md)


def quote(value: Any) -> str:
    """A value as A1111 writes it: str(), JSON-quoted if it contains `,`, `:` or a newline (non-ASCII kept)."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def create_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """`prompt`, an optional `Negative prompt:` line, then `Key: value` pairs in the given order.

    Entries whose value is None are omitted; an entry whose value equals its key is written as the bare key.
    """
    line = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


_PAIR = re.compile(r"""\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)""")
_SIZE = re.compile(r"^(\d+)x(\d+)$")

_PARSE_DEFAULTS: dict[str, Any] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Refiner switch by sampling steps": False,
}


def parse_infotext(text: str) -> dict[str, Any]:
    """`parse_generation_parameters`: infotext → dict of strings (plus A1111's defaults), §7.3."""
    result: dict[str, Any] = {}
    prompt, negative = "", ""
    done_with_prompt = False
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for key, value in _PAIR.findall(last):
        try:
            if value and value[0] == '"' and value[-1] == '"':
                value = json.loads(value)
        except json.JSONDecodeError:
            pass
        size = _SIZE.match(value) if isinstance(value, str) else None
        if size:
            result[f"{key}-1"] = size.group(1)
            result[f"{key}-2"] = size.group(2)
        else:
            result[key] = value
    result["Prompt"] = prompt
    result["Negative prompt"] = negative
    for key, value in _PARSE_DEFAULTS.items():
        result.setdefault(key, value)
    if "(" in prompt or "[" in prompt or "(" in negative or "[" in negative:
        result.setdefault("Emphasis", "Original")
    return result


def schedule_label(sampler_default: str | None, scheduler: str) -> str:
    """`Schedule type`: the label actually used, or "Automatic" when the model's native schedule ran."""
    from engine.schedules import SCHEDULERS

    name = scheduler if scheduler != "automatic" else sampler_default
    return SCHEDULERS[name].label if name else "Automatic"


def generation_parameters(plan, index: int, model_name: str | None, model_hash: str | None,
                          options: Mapping[str, Any]) -> dict[str, Any]:
    """The ordered `Key: value` entries of image `index` of a plan (§7.1 slot order)."""
    from engine.samplers import SAMPLERS

    sampler = SAMPLERS[plan.sampler]
    params: dict[str, Any] = {
        "Steps": plan.steps,
        "Sampler": plan.sampler,
        "Schedule type": schedule_label(sampler.default_scheduler, plan.scheduler),
        "CFG scale": float(plan.cfg_scale),
        "Seed": plan.seeds[index],
        "Size": f"{plan.width}x{plan.height}",
        "Model hash": model_hash if options.get("add_model_hash_to_info", True) else None,
        "Model": model_name if options.get("add_model_name_to_info", True) else None,
    }
    if plan.subseed_strength:
        params["Variation seed"] = plan.subseeds[index]
        params["Variation seed strength"] = float(plan.subseed_strength)
    if plan.seed_resize_from_w > 0 and plan.seed_resize_from_h > 0:
        params["Seed resize from"] = f"{plan.seed_resize_from_w}x{plan.seed_resize_from_h}"
    if plan.clip_skip > 1:
        params["Clip skip"] = plan.clip_skip
    if plan.eta_noise_seed_delta and sampler.options.get("uses_ensd") and (plan.eta is None or plan.eta != 0):
        params["ENSD"] = plan.eta_noise_seed_delta
    if plan.randn_source != "GPU":
        params["RNG"] = plan.randn_source
    if options.get("add_version_to_infotext", True):
        params["Version"] = VERSION
    return params
