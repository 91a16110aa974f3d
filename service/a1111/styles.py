"""A1111's prompt styles: styles.csv files (A1111 modules/styles.py: StyleDatabase), applied to prompts
(`StyleDatabase.apply_styles_to_prompt`) and found in them (`StyleDatabase.extract_styles_from_prompt`)."""

from __future__ import annotations

import csv
import glob
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_STYLES_FILE = "styles.csv"


@dataclass(frozen=True)
class PromptStyle:
    """One row of a styles file; dividers (several files) have no prompt texts."""

    name: str
    prompt: str | None
    negative_prompt: str | None
    path: str | None = None


def merge_prompt(style_text: str | None, prompt: str) -> str:
    """`{prompt}` in the style marks where the prompt goes; otherwise both, stripped, joined by ", "."""
    style_text = style_text or ""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(
    prompt: str, negative_prompt: str, style_names: Sequence[str] | None, styles: Mapping[str, PromptStyle]
) -> tuple[str, str]:
    """The request's `styles` applied in order to the prompt and the negative prompt (unknown names: empty)."""
    for name in style_names or ():
        style = styles.get(name)
        prompt = merge_prompt(style.prompt if style else "", prompt)
        negative_prompt = merge_prompt(style.negative_prompt if style else "", negative_prompt)
    return prompt, negative_prompt


def _without_style_text(style_text: str | None, prompt: str) -> str | None:
    """The prompt with the style's text taken out, or None when the style does not fit the prompt."""
    prompt = prompt.strip()
    style_text = (style_text or "").strip()
    if "{prompt}" in style_text:
        left, _, right = style_text.partition("{prompt}")
        if prompt.startswith(left) and prompt.endswith(right):
            return prompt[len(left) : len(prompt) - len(right)]
        return None
    if prompt.endswith(style_text):
        prompt = prompt[: len(prompt) - len(style_text)]
        return prompt[:-2] if prompt.endswith(", ") else prompt
    return None


def extract_styles(
    prompt: str, negative_prompt: str, styles: Iterable[PromptStyle]
) -> tuple[list[str], str, str]:
    """Undo `apply_styles` for reading an infotext: (style names in applied order, prompt, negative prompt).

    Styles are peeled off from the last applied one; a style fits when both of its texts do.
    """
    candidates = [s for s in styles if s.prompt or s.negative_prompt]
    found: list[str] = []
    while True:
        for style in candidates:
            positive = _without_style_text(style.prompt, prompt)
            negative = _without_style_text(style.negative_prompt, negative_prompt) if positive is not None else None
            if negative is not None:
                prompt, negative_prompt = positive, negative
                candidates.remove(style)
                found.append(style.name)
                break
        else:
            return list(reversed(found)), prompt, negative_prompt


def read_styles_csv(path: Path) -> dict[str, PromptStyle]:
    """One styles file: header `name,prompt,negative_prompt` (legacy `name,text`); `#` names are comments."""
    styles: dict[str, PromptStyle] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            if not row:
                continue
            name = row["name"]  # no name column: the file is reported and skipped, as in A1111
            if name is None or name.startswith("#"):
                continue
            prompt = row["prompt"] if "prompt" in row else row.get("text")
            styles[name] = PromptStyle(name, prompt or "", row.get("negative_prompt") or "", str(path))
    return styles


def _expand(patterns: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        name = os.path.basename(str(pattern))
        matches = sorted(Path(p) for p in glob.glob(str(pattern))) if "*" in name or "?" in name else [Path(pattern)]
        files.extend(m for m in matches if m not in files)
    return files


class StyleDatabase:
    """The styles of one or more files (`--styles-file`, wildcards allowed); later files override earlier names.

    Files are read again when one of them changes, so edits to styles.csv show without a restart.
    """

    def __init__(self, patterns: Sequence[str | Path] = (DEFAULT_STYLES_FILE,)):
        self.patterns = list(patterns) or [DEFAULT_STYLES_FILE]
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._styles: dict[str, PromptStyle] = {}

    def _current_stamp(self, files: list[Path]) -> tuple:
        return tuple((str(f), f.stat().st_mtime_ns if f.is_file() else None) for f in files)

    @property
    def styles(self) -> dict[str, PromptStyle]:
        files = _expand(self.patterns)
        stamp = self._current_stamp(files)
        with self._lock:
            if stamp != self._stamp:
                self._styles = self._load(files)
                self._stamp = stamp
            return self._styles

    @staticmethod
    def _load(files: list[Path]) -> dict[str, PromptStyle]:
        styles: dict[str, PromptStyle] = {}
        for path in files:
            if len(files) > 1:
                divider = f" {path.stem.upper()} ".center(40, "-")
                styles[divider] = PromptStyle(divider, None, None, None)
            if not path.is_file():
                continue
            try:
                styles.update(read_styles_csv(path))
            except (OSError, UnicodeDecodeError, csv.Error, KeyError) as exc:
                log.error("could not read styles from %s: %s", path, exc)  # A1111 reports and goes on
        return styles

    def apply(self, prompt: str, negative_prompt: str, style_names: Sequence[str] | None) -> tuple[str, str]:
        return apply_styles(prompt, negative_prompt, style_names, self.styles)

    def extract_styles(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        return extract_styles(prompt, negative_prompt, self.styles.values())


def styles_of(state) -> StyleDatabase:
    """The server's style database: files from `config.extra["styles_file"]` (a path, a pattern or a list of
    them), default ./styles.csv; created on first use."""
    database = getattr(state, "styles", None)
    if database is None:
        configured = state.config.extra.get("styles_file") or DEFAULT_STYLES_FILE
        patterns = [configured] if isinstance(configured, (str, Path)) else list(configured)
        database = StyleDatabase(patterns)
        state.styles = database
    return database
