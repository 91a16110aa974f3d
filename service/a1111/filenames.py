"""Saved images' names as A1111 v1.10.1 makes them (modules/images.py: sanitize_filename_part,
FilenameGenerator, get_next_sequence_number): `[tag]` patterns filled from the job, unknown tags kept."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from PIL import Image

# A1111 without --unix-filenames-sanitization; parts cut at --filenames-max-length (default 128).
INVALID_FILENAME_CHARS = '#<>:"/\\|?*\n\r\t'
INVALID_FILENAME_PREFIX = " "
INVALID_FILENAME_POSTFIX = " ."
MAX_FILENAME_PART_LENGTH = 128
DEFAULT_TIME_FORMAT = "%Y%m%d%H%M%S"

_NONLETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + "]+")
_PATTERN = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)")
_PATTERN_ARG = re.compile(r"(.*)<([^>]*)>$")
_TRANSLATION = {ord(c): "_" for c in INVALID_FILENAME_CHARS}


class _SkipPrevious:
    """A1111's NOTHING_AND_SKIP_PREVIOUS_TEXT: the tag and the literal text before it both vanish."""


SKIP = _SkipPrevious()


def sanitize_filename_part(text: str | None, replace_spaces: bool = True) -> str | None:
    """No path separators or characters Windows refuses; no leading spaces, no trailing spaces or dots; at most
    128 characters."""
    if text is None:
        return None
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate(_TRANSLATION)
    text = text.lstrip(INVALID_FILENAME_PREFIX)[:MAX_FILENAME_PART_LENGTH]
    return text.rstrip(INVALID_FILENAME_POSTFIX)


@dataclass(frozen=True)
class NameContext:
    """What A1111's `p` holds that the tags read: the job (the same for every image) and where this image sits
    in it (`iteration` = batch count index, `batch_index` = place in the batch)."""

    steps: int
    cfg_scale: float
    sampler: str
    scheduler_label: str  # `[scheduler]`: the label used, or the sampler's default's name, capitalised by A1111
    styles: tuple[str, ...] = ()
    style_prompts: tuple[str, ...] = ()  # the prompt texts of those styles (`[prompt_no_styles]`)
    prompt: str = ""  # the request's own prompt and negative prompt (`[full_prompt_hash]`, …)
    negative_prompt: str = ""
    all_seeds: tuple[int, ...] = ()
    batch_size: int = 1
    n_iter: int = 1
    iteration: int = 0
    batch_index: int = 0
    model_name: str | None = None
    model_hash: str | None = None
    job_timestamp: str = ""
    clip_skip: int = 1
    denoising_strength: float | None = None
    max_prompt_words: int = 8  # option directories_max_prompt_words
    user: str | None = None
    vae_filename: str = "NoneType"  # no separate VAE file is ever loaded here
    now: Callable[[], datetime.datetime] = field(default=datetime.datetime.now, compare=False)


class FilenameGenerator:
    """`apply(pattern)` fills A1111's tags for one image (`seed`, its `prompt` after styles, the `image`)."""

    def __init__(self, ctx: NameContext, seed: int | None, prompt: str | None, image: Image.Image,
                 basename: str = ""):
        self.ctx = ctx
        self.seed = seed
        self.prompt = prompt
        self.image = image
        self.basename = basename

    # Each returns the text, None (the tag is kept as written) or SKIP.
    def _replacements(self) -> dict[str, Callable[..., Any]]:
        c = self.ctx
        return {
            "basename": lambda: self.basename or "img",
            "seed": lambda: self.seed if self.seed is not None else "",
            "seed_first": lambda: self.seed if c.batch_size == 1 else c.all_seeds[0],
            "seed_last": lambda: SKIP if c.batch_size == 1 else c.all_seeds[-1],
            "steps": lambda: c.steps,
            "cfg": lambda: c.cfg_scale,
            "width": lambda: self.image.width,
            "height": lambda: self.image.height,
            "styles": lambda: sanitize_filename_part(
                ", ".join(s for s in c.styles if s != "None") or "None", replace_spaces=False),
            "sampler": lambda: sanitize_filename_part(c.sampler, replace_spaces=False),
            "sampler_scheduler": lambda: sanitize_filename_part(f"{c.sampler} {c.scheduler_label}",
                                                                replace_spaces=False),
            "scheduler": lambda: sanitize_filename_part(c.scheduler_label, replace_spaces=False),
            "model_hash": lambda: c.model_hash,
            "model_name": lambda: sanitize_filename_part(c.model_name, replace_spaces=False),
            "date": lambda: c.now().strftime("%Y-%m-%d"),
            "datetime": self._datetime,
            "job_timestamp": lambda: c.job_timestamp,
            "prompt_hash": lambda *args: _string_hash(self.prompt, *args),
            "negative_prompt_hash": lambda *args: _string_hash(c.negative_prompt, *args),
            "full_prompt_hash": lambda *args: _string_hash(f"{c.prompt} {c.negative_prompt}", *args),
            "prompt": lambda: sanitize_filename_part(self.prompt),
            "prompt_no_styles": self._prompt_no_styles,
            "prompt_spaces": lambda: sanitize_filename_part(self.prompt, replace_spaces=False),
            "prompt_words": self._prompt_words,
            "batch_number": lambda: SKIP if c.batch_size == 1 else c.batch_index + 1,
            "batch_size": lambda: c.batch_size,
            "generation_number": lambda: (SKIP if c.n_iter == 1 and c.batch_size == 1
                                          else c.iteration * c.batch_size + c.batch_index + 1),
            "hasprompt": self._hasprompt,
            "clip_skip": lambda: c.clip_skip,
            "denoising": lambda: c.denoising_strength if c.denoising_strength else SKIP,
            "user": lambda: c.user,
            "vae_filename": lambda: c.vae_filename,
            "none": lambda: "",  # just the sequence number
            "image_hash": self._image_hash,
        }

    def _datetime(self, *args: str) -> str | None:
        fmt = args[0] if args and args[0] != "" else DEFAULT_TIME_FORMAT
        zone = None
        if len(args) > 1:
            try:
                zone = ZoneInfo(args[1])
            except (ZoneInfoNotFoundError, ValueError):
                zone = None  # A1111: an unknown time zone is the local time
        moment = self.ctx.now().astimezone(zone)
        try:
            text = moment.strftime(fmt)
        except (ValueError, TypeError):
            text = moment.strftime(DEFAULT_TIME_FORMAT)
        return sanitize_filename_part(text, replace_spaces=False)

    def _prompt_no_styles(self) -> str | None:
        if self.prompt is None:
            return None
        text = self.prompt
        for style in self.ctx.style_prompts:
            if style:
                for part in style.split("{prompt}"):
                    text = text.replace(part, "").replace(", ,", ",").strip().strip(",")
                text = text.replace(style, "").strip().strip(",").strip()
        return sanitize_filename_part(text, replace_spaces=False)

    def _prompt_words(self) -> str | None:
        words = [w for w in _NONLETTERS.split(self.prompt or "") if w] or ["empty"]
        return sanitize_filename_part(" ".join(words[: self.ctx.max_prompt_words]), replace_spaces=False)

    def _hasprompt(self, *args: str) -> str | None:
        if self.prompt is None:
            return None
        lower = self.prompt.lower()
        out = ""
        for arg in args:
            if arg != "":
                division = arg.split("|")
                expected = division[0].lower()
                default = division[1] if len(division) > 1 else ""
                if lower.find(expected) >= 0:
                    out = f"{out}{expected}"
                else:
                    out = out if default == "" else f"{out}{default}"
        return sanitize_filename_part(out)

    def _image_hash(self, *args: str) -> str:
        length = int(args[0]) if args and args[0] != "" else None
        return hashlib.sha256(self.image.tobytes()).hexdigest()[0:length]

    def apply(self, pattern: str) -> str:
        """The pattern with its tags filled: `[tag]` or `[tag<arg>…]`, case-insensitive; a tag A1111 does not
        know, or one whose value is missing or fails, stays as `[tag]` (its arguments dropped)."""
        replacements = self._replacements()
        out = ""
        for m in _PATTERN.finditer(pattern):
            text, tag = m.groups()
            if tag is None:
                out += text
                continue
            args: list[str] = []
            while (arg := _PATTERN_ARG.match(tag)) is not None:
                tag, value = arg.groups()
                args.insert(0, value)
            fun = replacements.get(tag.lower())
            if fun is not None:
                try:
                    value = fun(*args)
                except Exception:  # A1111 reports it and keeps the tag
                    value = None
                if value is SKIP:
                    continue
                if value is not None:
                    out += text + str(value)
                    continue
            out += f"{text}[{tag}]"
        return out


def _string_hash(text: str | None, *args: str) -> str:
    length = int(args[0]) if args and args[0] != "" else 8
    return hashlib.sha256((text or "").encode()).hexdigest()[0:length]


def get_next_sequence_number(path: str | os.PathLike, basename: str) -> int:
    """One more than the largest number a file in `path` starts with (after `basename-`); 0 for none."""
    result = -1
    prefix = f"{basename}-" if basename != "" else ""
    for name in os.listdir(path):
        if name.startswith(prefix):
            first = os.path.splitext(name[len(prefix):])[0].split("-")[0]
            try:
                result = max(int(first), result)
            except ValueError:
                pass
    return result + 1


def scheduler_tag(sampler_default: str | None, scheduler_label: str) -> str:
    """A1111 `get_scheduler_str`: an Automatic schedule is named by the sampler's own default (or stays
    Automatic), then `str.capitalize()` ("SGM Uniform" → "Sgm uniform")."""
    name = (sampler_default or "Automatic") if scheduler_label == "Automatic" else scheduler_label
    return name.capitalize()


TAGS = frozenset(FilenameGenerator(NameContext(0, 0.0, "", ""), None, None, Image.new("L", (1, 1)))
                 ._replacements())


def literal_parts(pattern: str) -> list[str]:
    """The pattern's text that no sanitising touches, split where a known tag sits: the literal text, and an
    unknown tag, which A1111 keeps as written (`[../x]` stays `[../x]`)."""
    parts = [""]
    for m in _PATTERN.finditer(pattern):
        text, tag = m.groups()
        parts[-1] += text
        if tag is None:
            continue
        name = tag
        while (arg := _PATTERN_ARG.match(name)) is not None:
            name = arg.group(1)
        if name.lower() in TAGS:
            parts.append("")
        else:
            parts[-1] += f"[{name}]"
    return parts
