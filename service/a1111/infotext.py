"""A1111's infotext: the `parameters` text written into every image, and its parser (A1111
modules/processing.py: create_infotext)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from packaging.version import InvalidVersion, Version

from service.a1111.infotext_fields import Source, written
from service.a1111.job_options import JobOptions


def quote(value: Any) -> str:
    """A value as A1111 writes it: str(), or json.dumps of the value itself (non-ASCII kept) if its str()
    contains `,`, `:` or a newline (so a list comes out as a JSON list, as A1111's `quote` does)."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(value, ensure_ascii=False, default=str)


def create_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """`prompt`, an optional `Negative prompt:` line, then `Key: value` pairs in the given order.

    Entries whose value is None are omitted; an entry whose value equals its key is written as the bare key.
    """
    line = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}".strip()


_PAIR = re.compile(r"""\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)""")
_SIZE = re.compile(r"^(\d+)x(\d+)$")

StyleExtractor = Callable[[str, str], tuple[list[str], str, str]]

_V160 = Version("1.6.0")
_V170_TSNR = Version("v1.7.0-225")
_V180 = Version("1.8.0")
_V180_HR_STYLES = Version("1.8.0-139")


def parse_version(text: Any) -> Version | None:
    """`infotext_versions.parse_version`: "v1.10.1-89-g1937682a" → v1.10.1-89 (post-release 89); else None."""
    if text is None:
        return None
    m = re.match(r"([^-]+-[^-]+)-.*", str(text))
    try:
        return Version(m.group(1) if m else str(text))
    except InvalidVersion:
        return None


def _unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:  # A1111 keeps the raw text on any decoding failure
        return text


def _old_hires_fix_params(res: dict[str, Any], use_old_hires_fix_width_height: bool) -> None:
    """`restore_old_hires_fix_params`: a legacy `First pass size` becomes Size + Hires resize."""
    firstpass_width = res.get("First pass size-1")
    firstpass_height = res.get("First pass size-2")
    if use_old_hires_fix_width_height:
        hires_width = int(res.get("Hires resize-1", 0))
        hires_height = int(res.get("Hires resize-2", 0))
        if hires_width and hires_height:
            res["Size-1"] = hires_width
            res["Size-2"] = hires_height
            return
    if firstpass_width is None or firstpass_height is None:
        return
    firstpass_width, firstpass_height = int(firstpass_width), int(firstpass_height)
    width = int(res.get("Size-1", 512))
    height = int(res.get("Size-2", 512))
    if firstpass_width == 0 or firstpass_height == 0:
        scale = math.sqrt(512 * 512 / (width * height))
        firstpass_width = math.ceil(scale * width / 64) * 64
        firstpass_height = math.ceil(scale * height / 64) * 64
    res["Size-1"] = firstpass_width
    res["Size-2"] = firstpass_height
    res["Hires resize-1"] = width
    res["Hires resize-2"] = height


def _backcompat(res: dict[str, Any]) -> None:
    """`infotext_versions.backcompat`: settings that older versions implied, keyed on `Version`."""
    ver = parse_version(res.get("Version"))
    if ver is None:
        return
    if ver < _V160 and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if ver < _V160 and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if ver < _V170_TSNR:
        res["Downcast alphas_cumprod"] = True
    if ver < _V180 and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


def _uses_emphasis(prompt: str, negative_prompt: str) -> bool:
    from engine.prompt_parser import PromptTooComplex, parse_prompt_attention

    try:
        segments = parse_prompt_attention(prompt) + parse_prompt_attention(negative_prompt)
    except PromptTooComplex:  # brackets nested past the limit: emphasis, whatever the weights come to
        return True
    return len(segments) != len([s for s in segments if s[1] == 1.0 or s[0] == "BREAK"])


def parse_infotext(text: str, options: JobOptions | Mapping[str, Any] | None = None,
                   extract_styles: StyleExtractor | None = None) -> dict[str, Any]:
    """`parse_generation_parameters` (A1111 modules/infotext_utils.py: parse_generation_parameters): infotext
    → dict, key for key and in A1111's key order.

    Parsed values are strings; the defaults A1111 adds keep their types. `extract_styles(prompt, negative)`
    returns (style names, prompt, negative) with those styles taken out, as `PromptStyles` does.
    """
    options = JobOptions.of(options)
    res: dict[str, Any] = {}
    prompt, negative_prompt = "", ""
    done_with_prompt = False
    *lines, lastline = text.strip().split("\n")
    if len(_PAIR.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    for key, value in _PAIR.findall(lastline):
        if not value:
            continue  # A1111 fails on value[0] and skips the entry
        value = _unquote(value) if value[0] == '"' and value[-1] == '"' else value
        size = _SIZE.match(value)
        if size is not None:
            res[f"{key}-1"] = size.group(1)
            res[f"{key}-2"] = size.group(2)
        else:
            res[key] = value

    infotext_styles = options.infotext_styles
    if extract_styles is not None and infotext_styles != "Ignore":
        found, prompt_no_styles, negative_no_styles = extract_styles(prompt, negative_prompt)
        same_hr_styles = True
        version = parse_version(res.get("Version"))
        if ("Hires prompt" in res or "Hires negative prompt" in res) and (
            version > _V180_HR_STYLES if version else True
        ):
            hr_prompt = res.get("Hires prompt", prompt)
            hr_negative = res.get("Hires negative prompt", negative_prompt)
            hr_found, hr_prompt_no_styles, hr_negative_no_styles = extract_styles(hr_prompt, hr_negative)
            same_hr_styles = found == hr_found
            if same_hr_styles:
                res["Hires prompt"] = "" if hr_prompt_no_styles == prompt_no_styles else hr_prompt_no_styles
                res["Hires negative prompt"] = (
                    "" if hr_negative_no_styles == negative_no_styles else hr_negative_no_styles
                )
        if same_hr_styles:
            prompt, negative_prompt = prompt_no_styles, negative_no_styles
            if (infotext_styles == "Apply if any" and found) or infotext_styles == "Apply":
                res["Styles array"] = found

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    res.setdefault("Clip skip", "1")
    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] += f"<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    for key, value in (("Hires sampler", "Use same sampler"), ("Hires schedule type", "Use same scheduler"),
                       ("Hires checkpoint", "Use same checkpoint"), ("Hires prompt", ""),
                       ("Hires negative prompt", ""), ("Mask mode", "Inpaint masked"),
                       ("Masked content", "original"), ("Inpaint area", "Whole picture"),
                       ("Masked area padding", 32)):
        res.setdefault(key, value)
    _old_hires_fix_params(res, options.use_old_hires_fix_width_height)
    for key, value in (("RNG", "GPU"), ("Schedule type", "Automatic"), ("Schedule max sigma", 0),
                       ("Schedule min sigma", 0), ("Schedule rho", 0), ("VAE Encoder", "Full"),
                       ("VAE Decoder", "Full"), ("FP8 weight", "Disable")):
        res.setdefault(key, value)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    if "Emphasis" not in res and _uses_emphasis(prompt, negative_prompt):
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", False)
    if options.auto_backcompat:
        _backcompat(res)
    for key in options.infotext_skip_pasting:
        res.pop(key, None)
    return res


def generation_parameters(plan, index: int, model_name: str | None, model_hash: str | None,
                          result=None) -> dict[str, Any]:
    """The ordered `Key: value` entries of image `index` of a plan (A1111 `create_infotext`), read from the plan,
    the pipeline's `result` (engine.pipeline.GenerationResult) and the model; the labels and how each is
    written are service.a1111.infotext_fields.FIELDS."""
    return written(Source(plan, index, model_name, model_hash, result))
