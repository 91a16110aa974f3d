"""What a prompt's `<lora:…>` tags mean, as A1111's Lora extension reads them.

A1111 modules/extra_networks.py (ExtraNetworkParams: an item with exactly one `=` is named, the rest positional;
a batch uses its first prompt's tags), extensions-builtin/Lora/extra_networks_lora.py (activate: te/unet/dyn,
the `sd_lora` option, `Lora hashes`), networks.py (load_networks: lookup by name or alias, one rescan, the
`Lora not found` comment).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.plan import NetworkRequest
from engine.prompt_parser import ExtraNetworkTag

log = logging.getLogger(__name__)

LORA_KINDS = ("lora", "lyco")
_REMOVE_SYMBOLS = str.maketrans("", "", ":,")


class LoraLookup(Protocol):
    def find(self, name: str): ...  # → an entry with .name, .path, .shorthash, or None

    def refresh(self) -> None: ...


@dataclass(frozen=True)
class LoraArgs:
    name: str
    te: float
    unet: float
    dyn: int | None


def _split(items: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in items:
        parts = item.split("=", 2)
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    return positional, named


def lora_args(tag: ExtraNetworkTag) -> LoraArgs:
    """`<lora:name:te:unet:dyn>` with `te=`, `unet=`, `dyn=` named forms winning. ValueError on a bad number."""
    positional, named = _split(tag.items)
    te = float(positional[1]) if len(positional) > 1 else 1.0
    te = float(named.get("te", te))
    unet = float(positional[2]) if len(positional) > 2 else te
    unet = float(named.get("unet", unet))
    dyn = int(positional[3]) if len(positional) > 3 else None
    dyn = int(named["dyn"]) if "dyn" in named else dyn
    return LoraArgs(positional[0] if positional else "", te, unet, dyn)


@dataclass(frozen=True)
class ResolvedNetworks:
    requests: tuple[NetworkRequest, ...]
    comments: tuple[str, ...]  # what A1111 shows as the job's comments (and logs)
    hashes: dict[str, str]  # `Lora hashes`: name as written (without `:` and `,`) → short hash


def with_default_lora(prompts: Sequence[str], tags: Sequence[ExtraNetworkTag], sd_lora: str | None,
                      multiplier: float, lookup: LoraLookup | None) -> tuple[tuple[str, ...], bool]:
    """Option `sd_lora`: a known network not already in the tags is appended to every prompt as
    `<lora:X:extra_networks_default_multiplier>` (it then shows in the infotext's prompt too)."""
    if not sd_lora or sd_lora == "None" or lookup is None or lookup.find(sd_lora) is None:
        return tuple(prompts), False
    if any(t.kind in LORA_KINDS and t.items and t.items[0] == sd_lora for t in tags):
        return tuple(prompts), False
    return tuple(f"{p}<lora:{sd_lora}:{multiplier:g}>" for p in prompts), True


def resolve_loras(tags: Sequence[ExtraNetworkTag], lookup: LoraLookup | None) -> ResolvedNetworks:
    tags = [t for t in tags if t.kind in LORA_KINDS]
    if not tags:
        return ResolvedNetworks((), (), {})
    if lookup is None:
        return ResolvedNetworks((), ("LoRAs are not available on this server",), {})
    try:
        args = [lora_args(t) for t in tags]
    except ValueError as exc:
        # extra_networks.activate: the exception skips every LoRA of the batch; A1111 only logs it.
        log.error("activating extra network lora with arguments %s: %s", [t.items for t in tags], exc)
        return ResolvedNetworks((), (f"LoRAs not applied: {exc}",), {})
    found, missing = [], []
    for a in args:
        entry = lookup.find(a.name)
        if entry is None:
            lookup.refresh()  # networks.load_networks rescans once when a name is unknown
            entry = lookup.find(a.name)
        if entry is None:
            missing.append(a.name)
            continue
        found.append((a, entry))
    comments = (f"Lora not found: {', '.join(missing)}",) if missing else ()
    if missing:
        log.warning("Lora not found: %s", ", ".join(missing))
    requests = tuple(NetworkRequest(a.name, str(entry.path), a.te, a.unet, a.dyn) for a, entry in found)
    hashes: dict[str, str] = {}
    for a, entry in found:
        try:
            hashes[a.name.translate(_REMOVE_SYMBOLS)] = entry.shorthash
        except (OSError, ValueError):  # unreadable: no hash, and the worker reports why it cannot be applied
            continue
    return ResolvedNetworks(requests, comments, hashes)


def lora_hashes_text(hashes: dict[str, str]) -> str | None:
    return ", ".join(f"{k}: {v}" for k, v in hashes.items()) or None


def parse_lora_hashes(text: str) -> dict[str, str]:
    """`Lora hashes` back into {name: hash} (lora_script.py: infotext_pasted)."""
    found: dict[str, str] = {}
    for part in str(text).split(","):
        name, sep, value = part.strip().partition(":")
        if sep:
            found[name.strip()] = value.strip()
    return found


def with_networks(plan, disable: bool | None, options, lookup: LoraLookup | None):
    """The plan with its LoRAs resolved: `networks` for the first pass and the hires pass (its own prompt's
    tags), the `sd_lora` option applied to the prompts, `Lora hashes` and comments in the report.

    `disable` is the request's `disable_extra_networks`: tags are still removed from the text, nothing is
    applied (A1111 modules/processing.py: process_images_inner)."""
    from dataclasses import replace

    from engine.prompt_parser import batch_extra_networks

    if disable:
        return plan
    tags = batch_extra_networks(plan.prompts)
    prompts, appended = with_default_lora(plan.prompts, tags, options.sd_lora,
                                          options.extra_networks_default_multiplier, lookup)
    hires = plan.hires
    if appended:
        tags = batch_extra_networks(prompts)
        if hires is not None and hires.prompts == plan.prompts:
            hires = replace(hires, prompts=prompts)
    first = resolve_loras(tags, lookup)
    hashes = dict(first.hashes)
    comments = list(first.comments)
    if hires is not None:
        hires_tags = batch_extra_networks(hires.prompts)
        second = first if hires_tags == tags else resolve_loras(hires_tags, lookup)
        hashes.update(second.hashes)  # accumulated over the hires pass, as A1111's p.lora_hashes
        comments += [c for c in second.comments if c not in comments]
        hires = replace(hires, networks=second.requests)
    report = replace(plan.report, comments=plan.report.comments + tuple(comments),
                     lora_hashes=lora_hashes_text(hashes) if options.lora_add_hashes_to_infotext else None)
    return replace(plan, prompts=prompts, extra_networks=tags, networks=first.requests, hires=hires, report=report)


_RE_LORA_NAME = re.compile("<lora:([^:]+):")


def rewrite_pasted_lora_names(params: dict, alias_for_hash) -> None:
    """A pasted infotext's `<lora:name:` tags renamed to the network on this server with the same hash
    (lora_script.py: infotext_pasted), in `Prompt` and `Hires prompt`; unknown hashes leave the tag as written."""
    hashes = parse_lora_hashes(params.get("Lora hashes") or "")
    if not hashes:
        return

    def replace_name(match: re.Match) -> str:
        shorthash = hashes.get(match.group(1))
        alias = alias_for_hash(shorthash) if shorthash else None
        return f"<lora:{alias}:" if alias else match.group(0)

    for key in ("Prompt", "Hires prompt"):
        if isinstance(params.get(key), str):
            params[key] = _RE_LORA_NAME.sub(replace_name, params[key])
