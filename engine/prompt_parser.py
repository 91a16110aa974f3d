"""A1111's prompt language: editing/alternation schedules, emphasis, AND, BREAK, extra-network tags, comments.

Behaviour follows A1111 v1.10.1's modules/prompt_parser.py and the prompt fields of modules/api/models.py;
deliberate deviations are listed in
docs/compatibility.md ("Prompt language and conditioning").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

# The schedule grammar of A1111 modules/prompt_parser.py: schedule_parser, as A1111 gives it to lark's Earley
# parser. `_Parser` below
# implements it; tests check it against lark with this grammar (the spec's vectors and a differential fuzz).
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

# lark is the reference for the grammar only (tests compare against it): Earley's time grows with roughly the cube
# of the number of bracket groups (80 `[a]` groups take seconds, 500 take minutes) and its tree building recurses
# once per nesting level. The hand-written parser below gives the same schedules in linear time.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:[eE][+-]?\d+)|(?:\d+\.(?:\d+)?|\.\d+)(?:[eE][+-]?\d+)?|\d+)")  # SIGNED_NUMBER
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_WHITESPACE = re.compile(r"\s*")

# Bounds on what a prompt may be (A1111 has none; see docs/compatibility.md "Limits"). Real prompts are a few KB
# with emphasis nested a handful of levels; the bounds keep the worst case of every parser here within
# milliseconds (all of them are linear in length × depth) and the recursion far from Python's limit.
MAX_PROMPT_CHARS = 20_000
MAX_PROMPT_DEPTH = 100


class PromptTooComplex(ValueError):
    """A prompt over MAX_PROMPT_CHARS characters or nested deeper than MAX_PROMPT_DEPTH brackets."""


def nesting_depth(prompt: str) -> int:
    """The deepest nesting of `(` or of `[` (each counted alone, unmatched closers ignored, escapes skipped).

    One linear scan; it bounds the recursion of the schedule parser and the open-bracket stacks of the emphasis
    parser, unclosed brackets included."""
    deepest = round_depth = square_depth = 0
    escaped = False
    for ch in prompt:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "(":
            round_depth += 1
            deepest = max(deepest, round_depth)
        elif ch == "[":
            square_depth += 1
            deepest = max(deepest, square_depth)
        elif ch == ")":
            round_depth = max(round_depth - 1, 0)
        elif ch == "]":
            square_depth = max(square_depth - 1, 0)
    return deepest


def check_prompt(prompt: str, what: str = "prompt") -> None:
    """Raise PromptTooComplex naming the limit a prompt exceeds; cheap (no parsing)."""
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptTooComplex(f"{what} is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}")
    depth = nesting_depth(prompt)
    if depth > MAX_PROMPT_DEPTH:
        raise PromptTooComplex(f"{what} nests brackets {depth} deep; the limit is {MAX_PROMPT_DEPTH}")


class ScheduledText(NamedTuple):
    """The prompt text used for every sampling step `<= end_at_step` (and after the previous entry's step)."""

    end_at_step: int
    text: str


class AttentionSegment(NamedTuple):
    """A run of prompt text and its emphasis weight; `BREAK_MARKER` separates 75-token chunks."""

    text: str
    weight: float


BREAK_MARKER = AttentionSegment("BREAK", -1.0)


@dataclass(frozen=True)
class _Scheduled:
    before: tuple
    after: tuple
    number: str


@dataclass(frozen=True)
class _Alternate:
    options: tuple


class _Fail(Exception):
    pass


class _Parser:
    """The schedule grammar's parse as lark's Earley resolves it, in linear time.

    Inside brackets the grammar is deterministic: a group's kind follows from the separators at its own level
    (`|` alternate, `:` NUMBER `]` scheduled, else emphasized), and any group that does not parse makes its parent
    fail. Only the top level is ambiguous (stray `[ ] ( ) :` are allowed there): Earley takes every group that
    parses as that group, and a bracket that opens none as a literal. Results per position are memoised, so a
    top-level retry after a failed group never parses the same group twice."""

    def __init__(self, text: str):
        self.text = text
        self.groups: dict[int, tuple[list, int] | None] = {}
        self.stray_after_group = False  # a stray `[ ] ( ) :` right after a top-level group

    def items(self, i: int) -> tuple[list, int]:
        """A `prompt`: plain text, whitespace and groups, up to the next `) ] : |` or the end."""
        text, out = self.text, []
        while i < len(text):
            ch = text[i]
            if ch in "([":
                group = self.group(i)
                if group is None:
                    raise _Fail
                out.extend(group[0])
                i = group[1]
            elif ch in ")]:|":
                break
            else:
                m = _PLAIN.match(text, i)
                if m is None:  # a backslash before a newline or at the end: no terminal matches
                    raise _Fail
                out.append(m.group(0))
                i = m.end()
        return out, i

    def group(self, i: int) -> tuple[list, int] | None:
        if i not in self.groups:
            try:
                self.groups[i] = self._group(i)
            except _Fail:
                self.groups[i] = None
        return self.groups[i]

    def _group(self, i: int) -> tuple[list, int]:
        text = self.text
        first, j = self.items(i + 1)
        end = text[j] if j < len(text) else ""
        if text[i] == "(":
            if end == ":":
                second, j = self.items(j + 1)
                if j < len(text) and text[j] == ")":
                    return ["(", *first, ":", *second, ")"], j + 1
                raise _Fail
            if end == ")":
                return ["(", *first, ")"], j + 1
            raise _Fail
        if end == "]":
            return ["[", *first, "]"], j + 1
        if end == "|":
            options = [tuple(first)]
            while j < len(text) and text[j] == "|":
                option, j = self.items(j + 1)
                options.append(tuple(option))
            if j < len(text) and text[j] == "]":
                return [_Alternate(tuple(options))], j + 1
            raise _Fail
        if end == ":":
            number = self.number(j + 1)
            if number is not None:
                return [_Scheduled((), tuple(first), number[0])], number[1]
            second, j = self.items(j + 1)
            if j < len(text) and text[j] == ":":
                number = self.number(j + 1)
                if number is not None:
                    return [_Scheduled(tuple(first), tuple(second), number[0])], number[1]
        raise _Fail

    def number(self, i: int) -> tuple[str, int] | None:
        """`[WHITESPACE] NUMBER [WHITESPACE] "]"` from i: the number and the index after the `]`."""
        text = self.text
        i = _WHITESPACE.match(text, i).end()
        m = _NUMBER.match(text, i)
        if m is None:
            return None
        j = _WHITESPACE.match(text, m.end()).end()
        if j < len(text) and text[j] == "]":
            return m.group(0), j + 1
        return None

    def parse(self) -> list | None:
        """The top level: groups where they parse, stray brackets and colons as text; None if unparseable."""
        text, out, i, group_end = self.text, [], 0, -1
        try:
            while i < len(text):
                ch = text[i]
                if ch in "([":
                    group = self.group(i)
                    if group is not None:
                        out.extend(group[0])
                        i = group_end = group[1]
                        continue
                if ch in "()[]:":
                    out.append(ch)
                    self.stray_after_group |= i == group_end
                    i += 1
                elif ch == "|":  # a `|` outside an alternation matches nothing
                    return None
                else:
                    m = _PLAIN.match(text, i)
                    if m is None:
                        return None
                    out.append(m.group(0))
                    i = m.end()
        except _Fail:
            return None
        return out


# A top-level group directly followed by a stray `[ ] ( ) :` is the one shape where lark's Earley may keep the
# group as text (e.g. `[a:0.5]]]`, `[a:0.5]::`, by an ambiguity resolution that has no simple rule). Such prompts
# go to lark itself while they are small enough for its cost; larger ones keep the group (docs/compatibility.md).
LARK_MAX_BRACKETS = 32
_RE_BRACKETS = re.compile(r"[][()]")


@lru_cache(maxsize=1)
def _lark_parser():
    import lark

    return lark.Lark(_GRAMMAR, parser="earley", maybe_placeholders=True)


def _from_lark(node) -> list:
    """lark's tree as `_Parser` items (text, _Scheduled, _Alternate); depth ≤ LARK_MAX_BRACKETS."""
    if node is None:
        return []
    if not hasattr(node, "data"):
        return [str(node)]
    if node.data == "scheduled":
        before, after, _, number, _ = node.children
        return [_Scheduled(tuple(_from_lark(before)), tuple(_from_lark(after)), str(number))]
    if node.data == "alternate":
        return [_Alternate(tuple(tuple(_from_lark(option)) for option in node.children))]
    return [item for child in node.children for item in _from_lark(child)]


@lru_cache(maxsize=256)
def _parse(prompt: str) -> tuple | None:
    parser = _Parser(prompt)
    tree = parser.parse()
    if parser.stray_after_group and len(_RE_BRACKETS.findall(prompt)) <= LARK_MAX_BRACKETS:
        import lark

        try:
            return tuple(_from_lark(_lark_parser().parse(prompt)))
        except lark.exceptions.LarkError:
            return None
    return tuple(tree) if tree is not None else None


def _when(number: str, steps: int, int_offset: int, float_offset: float, use_old_scheduling: bool) -> int:
    """The last step of a scheduled `before` part (the number conversion of A1111 modules/prompt_parser.py:
    get_learned_conditioning_prompt_schedules)."""
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


def _walk(items, found: list) -> None:
    for item in items:
        if isinstance(item, _Scheduled):
            found.append(item)
            _walk(item.before, found)
            _walk(item.after, found)
        elif isinstance(item, _Alternate):
            found.append(item)
            for option in item.options:
                _walk(option, found)


def _text_at(items, step: int, whens: dict[int, int], parts: list[str]) -> None:
    for item in items:  # recursion depth is bounded by MAX_PROMPT_DEPTH
        if isinstance(item, str):
            parts.append(item)
        elif isinstance(item, _Scheduled):
            _text_at(item.before if step <= whens[id(item)] else item.after, step, whens, parts)
        else:
            _text_at(item.options[(step - 1) % len(item.options)], step, whens, parts)


def _schedule_plan(prompt: str, steps: int, hires_steps: int | None, use_old_scheduling: bool):
    """(tree, whens, sorted boundaries) of a prompt's schedule; tree None for text copied through as it is."""
    if hires_steps is None or use_old_scheduling:
        int_offset, float_offset, total = 0, 0.0, steps
    else:
        int_offset, float_offset, total = steps, 1.0, hires_steps
    if "[" not in prompt:  # edits and alternations open with "["; anything else is copied through as it is
        return None, {}, [total]
    check_prompt(prompt)
    tree = _parse(prompt)
    if tree is None:
        return None, {}, [total]
    nodes: list = []
    _walk(tree, nodes)
    whens = {
        id(node): _when(node.number, total, int_offset, float_offset, use_old_scheduling)
        for node in nodes if isinstance(node, _Scheduled)
    }
    boundaries = {total} | {w for w in whens.values() if w >= 1}
    if any(isinstance(node, _Alternate) for node in nodes):
        boundaries |= set(range(1, total + 1))
    return tree, whens, sorted(boundaries)


def prompt_schedule(
    prompt: str, steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False
) -> list[ScheduledText]:
    """The texts a prompt takes over the sampling steps, for `steps` total steps (or the hires pass).

    With `hires_steps` (new rules) integers count from the first pass's start and fractions run from 1.0 to 2.0
    over the hires pass; `use_old_scheduling` restores the pre-1.6 rules, where the hires pass reuses `steps`.
    Raises PromptTooComplex for a prompt over the limits.
    """
    tree, whens, boundaries = _schedule_plan(prompt, steps, hires_steps, use_old_scheduling)
    if tree is None:
        return [ScheduledText(boundaries[0], prompt)]
    schedule = []
    for b in boundaries:
        parts: list[str] = []
        _text_at(tree, b, whens, parts)
        schedule.append(ScheduledText(b, "".join(parts)))
    return schedule


# Every text of a prompt's schedule is encoded (A1111 encodes the whole schedule as one batch, repeats included),
# so an alternation `[a|b]` in a long prompt at many steps multiplies the text encoder's work and the embeddings
# held (~3 KB per token for SD 1.x: ~1 GB at this bound with ~3 characters a token). Bounded by characters: an
# alternating 3,000-character prompt fits 150 steps of a second-order sampler (300 texts).
MAX_SCHEDULE_CHARS = 1_000_000


def check_schedule(prompt: str, steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False,
                   what: str = "prompt") -> None:
    """Raise PromptTooComplex when the schedule's texts together would exceed MAX_SCHEDULE_CHARS (no texts are
    built: the count of schedule entries times the prompt's length bounds them)."""
    entries = len(_schedule_plan(prompt, steps, hires_steps, use_old_scheduling)[2])
    if entries * len(prompt) > MAX_SCHEDULE_CHARS:
        raise PromptTooComplex(f"{what} takes {entries} different forms over {hires_steps or steps} steps "
                               f"(prompt editing or alternation) at {len(prompt)} characters each; the limit is "
                               f"{MAX_SCHEDULE_CHARS} characters in all")


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
_RE_BREAK = re.compile(r"\bBREAK\b")


def _split_break(text: str) -> list[str]:
    r"""A1111's `re.split(r"\s*\bBREAK\b\s*", text)` in linear time: its leading `\s*` is tried at every
    position of a whitespace run, which is quadratic in the run's length (20k spaces: 17 s)."""
    if "BREAK" not in text:
        return [text]
    parts = _RE_BREAK.split(text)
    return [p.lstrip() if i else p for i, p in enumerate(q.rstrip() if j < len(parts) - 1 else q
                                                            for j, q in enumerate(parts))]
_ROUND = 1.1
_SQUARE = 1 / 1.1


def parse_prompt_attention(text: str) -> list[AttentionSegment]:
    """Split text into runs with emphasis weights: (a) ×1.1, [a] ÷1.1, (a:w) ×w, escapes, BREAK markers.

    Raises PromptTooComplex for brackets nested deeper than MAX_PROMPT_DEPTH (the cost is length × depth)."""
    depth = nesting_depth(text)
    if depth > MAX_PROMPT_DEPTH:
        raise PromptTooComplex(f"prompt nests brackets {depth} deep; the limit is {MAX_PROMPT_DEPTH}")
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
            for i, part in enumerate(_split_break(token)):
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
    """Composable diffusion: `a AND b:0.5` → [("a", 1.0), (" b", 0.5)] (A1111 modules/prompt_parser.py:
    get_multicond_prompt_list)."""
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

    # A match ends at a `>`: searching only up to the last one keeps a failed search from rescanning the rest
    # of the prompt at every `<` (quadratic for `<a:<a:<a:…` without a `>`).
    end = prompt.rfind(">") + 1
    return _RE_EXTRA_NETWORK.sub(found, prompt[:end]) + prompt[end:], tuple(tags)


def batch_extra_networks(prompts: Iterable[str]) -> tuple[ExtraNetworkTag, ...]:
    """The tags A1111 activates for a batch: those of its first prompt."""
    for prompt in prompts:
        return extract_extra_networks(prompt)[1]
    return ()


def strip_comments(text: str) -> str:
    """Drop `#` comments to the end of the line (option `enable_prompt_comments`)."""
    text = re.sub(r"(^|\n)#[^\n]*(\n|$)", "\n", text)
    return re.sub(r"#[^\n]*(\n|$)", "\n", text)
