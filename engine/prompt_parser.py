"""A1111's prompt language: editing/alternation schedules, emphasis, AND, BREAK, extra-network tags, comments.

Behaviour follows a1111-sampling.md §7.1–§7.4 and a1111-api.md §3.1; deliberate deviations are listed in
docs/compatibility.md ("Prompt language and conditioning").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import lark

# The schedule grammar of a1111-sampling.md §7.1. Earley with lark's default ambiguity resolution picks the same
# trees as A1111's lark 1.1.2 (checked by the spec's vectors and a differential fuzz, see tests).
_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""

_schedule_parser = lark.Lark(_GRAMMAR, parser="earley", maybe_placeholders=True)


class ScheduledText(NamedTuple):
    """The prompt text used for every sampling step `<= end_at_step` (and after the previous entry's step)."""

    end_at_step: int
    text: str


class AttentionSegment(NamedTuple):
    """A run of prompt text and its emphasis weight; `BREAK_MARKER` separates 75-token chunks."""

    text: str
    weight: float


BREAK_MARKER = AttentionSegment("BREAK", -1.0)


@lru_cache(maxsize=256)
def _parse(prompt: str) -> lark.Tree | None:
    try:
        return _schedule_parser.parse(prompt)
    except (lark.exceptions.LarkError, RecursionError):
        return None  # A1111: an unparseable prompt is used verbatim for every step


_PLAIN_CHAR = r"(?:[^\\\[\]():|]|\\.)"
# An innermost `(text)` / `(text:text)` group: it always parses as `emphasized`, is copied through unchanged at
# every step, and holds nothing a schedule could use. Earley's cost grows steeply with the number of brackets,
# so such groups are folded into one placeholder character each before parsing and put back afterwards.
_RE_SIMPLE_GROUP = re.compile(rf"\\.|(\({_PLAIN_CHAR}*(?::{_PLAIN_CHAR}*)?\))")  # escapes consumed first
_PLACEHOLDERS = range(0xE000, 0xF900)  # Unicode private use area


def _fold_groups(prompt: str) -> tuple[str, dict[str, str]]:
    if any(0xE000 <= ord(c) < 0xF900 for c in prompt):
        return prompt, {}
    folded: dict[str, str] = {}
    while len(folded) < len(_PLACEHOLDERS):
        def fold(m: re.Match) -> str:
            if m.group(1) is None or len(folded) >= len(_PLACEHOLDERS):
                return m.group(0)
            key = chr(_PLACEHOLDERS[len(folded)])
            folded[key] = m.group(0)
            return key

        reduced = _RE_SIMPLE_GROUP.sub(fold, prompt)
        if reduced == prompt:
            break
        prompt = reduced
    return prompt, folded


def _unfold(text: str, folded: dict[str, str]) -> str:
    for key in reversed(folded):  # later placeholders may contain earlier ones, never the reverse
        text = text.replace(key, folded[key])
    return text


def _when(number: str, steps: int, int_offset: int, float_offset: float, use_old_scheduling: bool) -> int:
    """The last step of a scheduled `before` part (a1111-sampling.md §7.2 number conversion)."""
    v = float(number)
    if use_old_scheduling:
        v = v * steps if v < 1 else v
    elif "." in number:
        v = (v - float_offset) * steps
    else:
        v = v - int_offset
    # Clamping before int() keeps the result of A1111's min(steps, int(v)) for every finite v and turns its
    # OverflowError on literals such as 1e999 into "always after".
    return int(min(max(v, -1.0), float(steps)))


def _collect(tree: lark.Tree) -> tuple[list[lark.Tree], bool]:
    scheduled = list(tree.find_data("scheduled"))
    has_alternate = next(tree.find_data("alternate"), None) is not None
    return scheduled, has_alternate


def _text_at(tree: lark.Tree, step: int, whens: dict[int, int]) -> str:
    parts: list[str] = []
    stack: list[lark.Tree | lark.Token | None] = [tree]
    while stack:  # iterative: deeply nested prompts must not hit the recursion limit
        node = stack.pop()
        if node is None:
            continue
        if isinstance(node, lark.Token):
            parts.append(str(node))
            continue
        if node.data == "scheduled":
            before, after = node.children[0], node.children[1]
            stack.append(before if step <= whens[id(node)] else after)
        elif node.data == "alternate":
            options = node.children
            stack.append(options[(step - 1) % len(options)])
        else:
            stack.extend(reversed(node.children))
    return "".join(parts)


def prompt_schedule(
    prompt: str, steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[ScheduledText]:
    """The texts a prompt takes over the sampling steps, for `steps` total steps (or the hires pass).

    With `hires_steps` (new rules) integers count from the first pass's start and fractions run from 1.0 to 2.0
    over the hires pass; `use_old_scheduling` restores the pre-1.6 rules, where the hires pass reuses `steps`.
    """
    if hires_steps is None or use_old_scheduling:
        int_offset, float_offset, total = 0, 0.0, steps
    else:
        int_offset, float_offset, total = steps, 1.0, hires_steps
    if "[" not in prompt:  # edits and alternations open with "["; anything else is copied through as it is
        return [ScheduledText(total, prompt)]
    reduced, folded = _fold_groups(prompt)
    tree = _parse(reduced)
    if tree is None:
        return [ScheduledText(total, prompt)]
    scheduled, has_alternate = _collect(tree)
    whens = {
        id(node): _when(str(node.children[3]), total, int_offset, float_offset, use_old_scheduling)
        for node in scheduled
    }
    boundaries = {total} | {w for w in whens.values() if w >= 1}
    if has_alternate:
        boundaries |= set(range(1, total + 1))
    return [ScheduledText(b, _unfold(_text_at(tree, b, whens), folded)) for b in sorted(boundaries)]


def prompt_schedules(
    prompts: Sequence[str], steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[list[ScheduledText]]:
    """`prompt_schedule` for each prompt (A1111's get_learned_conditioning_prompt_schedules)."""
    unique = {p: prompt_schedule(p, steps, hires_steps, use_old_scheduling) for p in dict.fromkeys(prompts)}
    return [unique[p] for p in prompts]


_RE_ATTENTION = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\|   # escapes and a lone backslash
    \(|\[|
    :\s*([+-]?[.\d]+)\s*\)|       # (text:weight)
    \)|]|
    [^\\()\[\]:]+|
    :
    """,
    re.X,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ROUND = 1.1
_SQUARE = 1 / 1.1


def parse_prompt_attention(text: str) -> list[AttentionSegment]:
    """Split text into runs with emphasis weights: (a) ×1.1, [a] ÷1.1, (a:w) ×w, escapes, BREAK markers."""
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for entry in res[start:]:
            entry[1] *= factor

    for m in _RE_ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open and _is_float(weight):
            multiply_from(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), _ROUND)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), _SQUARE)
        else:
            for i, part in enumerate(_RE_BREAK.split(token)):
                if i > 0:
                    res.append(list(BREAK_MARKER))
                res.append([part, 1.0])
    for start in round_open:
        multiply_from(start, _ROUND)
    for start in square_open:
        multiply_from(start, _SQUARE)
    if not res:
        res = [["", 1.0]]
    merged: list[list] = [res[0]]
    for entry in res[1:]:
        if entry[1] == merged[-1][1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    return [AttentionSegment(t, w) for t, w in merged]


def _is_float(s: str) -> bool:
    # `[.\d]+` also matches "." or "1.2.3", on which A1111 raises; those stay literal text here.
    try:
        float(s)
    except ValueError:
        return False
    return True


_RE_AND = re.compile(r"\bAND\b")
_RE_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Composable diffusion: `a AND b:0.5` → [("a", 1.0), (" b", 0.5)] (a1111-sampling.md §7.3)."""
    parts = []
    for sub in _RE_AND.split(prompt):
        m = _RE_WEIGHT.search(sub)
        text, weight = m.groups() if m is not None else (sub, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


@dataclass(frozen=True)
class ExtraNetworkTag:
    """`<kind:arg1:arg2:key=value>` from a prompt, e.g. `<lora:add_detail:0.8>` → kind "lora"."""

    kind: str
    items: tuple[str, ...]

    @property
    def positional(self) -> tuple[str, ...]:
        return tuple(i for i in self.items if "=" not in i)

    @property
    def named(self) -> dict[str, str]:
        return dict(i.split("=", 1) for i in self.items if "=" in i)

    @property
    def name(self) -> str:
        return self.positional[0] if self.positional else ""

    @property
    def multiplier(self) -> float:
        """The first number after the name (A1111: the te/unet multiplier), 1.0 if absent or not a number."""
        args = self.positional[1:]
        try:
            return float(args[0]) if args else 1.0
        except ValueError:
            return 1.0


_RE_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


def extract_extra_networks(prompt: str) -> tuple[str, tuple[ExtraNetworkTag, ...]]:
    """Remove `<kind:...>` tags from the prompt; return the remaining text and the tags in order."""
    tags: list[ExtraNetworkTag] = []

    def found(m: re.Match) -> str:
        tags.append(ExtraNetworkTag(m.group(1), tuple(m.group(2).split(":"))))
        return ""

    return _RE_EXTRA_NETWORK.sub(found, prompt), tuple(tags)


def batch_extra_networks(prompts: Iterable[str]) -> tuple[ExtraNetworkTag, ...]:
    """The tags A1111 activates for a batch: those of its first prompt."""
    for prompt in prompts:
        return extract_extra_networks(prompt)[1]
    return ()


def strip_comments(text: str) -> str:
    """Drop `#` comments to the end of the line (option `enable_prompt_comments`)."""
    text = re.sub(r"(^|\n)#[^\n]*(\n|$)", "\n", text)
    return re.sub(r"#[^\n]*(\n|$)", "\n", text)
