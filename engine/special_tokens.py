"""The start, end and padding token ids a prompt is built with, read from a model's tokenizer files.

These come from the tokenizer folder (`vocab.json`, `tokenizer_config.json`, `special_tokens_map.json`) the way
transformers' `CLIPTokenizer.from_pretrained` resolves `bos_token`, `eos_token` and `pad_token`, as A1111 and
diffusers take them. Never from the text encoder's `config.json`: SD 1.x/2.x folders carry transformers' legacy
`bos_token_id: 0, eos_token_id: 2, pad_token_id: 1` there, which are not the CLIP vocabulary's ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# CLIPTokenizer's defaults: SD 1.x pads with the end token ("hack to enable padding" in transformers).
DEFAULT_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


class TokenizerFilesError(ValueError):
    """The tokenizer folder does not name (or its vocabulary does not hold) a start, end or padding token."""


@dataclass(frozen=True)
class SpecialTokenIds:
    """The ids the prompt path uses. SD 1.x: 49406 / 49407 / 49407; SD 2.x: pad is "!" = 0 (open_clip's zero)."""

    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 49407


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _content(value: object) -> str | None:
    """A token as tokenizer files store it: a string, or a serialised AddedToken {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def special_token_names(folder: Path) -> dict[str, str]:
    """bos/eos/pad token strings as transformers resolves them: tokenizer_config.json, and on its legacy path
    (no `added_tokens_decoder`) special_tokens_map.json on top; CLIPTokenizer's defaults for what neither names."""
    config = _read_json(folder / "tokenizer_config.json")
    names = dict(DEFAULT_TOKENS)
    sources = [config] if "added_tokens_decoder" in config else [config, _read_json(folder / "special_tokens_map.json")]
    for source in sources:
        for key in names:
            token = _content(source.get(key))
            if token is not None:
                names[key] = token
    return names


def token_ids(folder: Path) -> dict[str, int]:
    """token → id: vocab.json, then the added tokens (tokenizer_config's `added_tokens_decoder`, added_tokens.json)."""
    vocab_file = folder / "vocab.json"
    if not vocab_file.is_file():
        raise TokenizerFilesError(f"{folder}: no vocab.json")
    ids = dict(_read_json(vocab_file))
    for key, token in _read_json(folder / "tokenizer_config.json").get("added_tokens_decoder", {}).items():
        if _content(token) is not None:
            ids[_content(token)] = int(key)
    ids.update(_read_json(folder / "added_tokens.json"))
    return ids


def read_special_token_ids(folder: str | Path) -> SpecialTokenIds:
    """The start, end and padding ids of the tokenizer in `folder` (a model's or a bundle's `tokenizer/`)."""
    folder = Path(folder)
    names = special_token_names(folder)
    ids = token_ids(folder)
    missing = {key: token for key, token in names.items() if token not in ids}
    if missing:
        raise TokenizerFilesError(f"{folder}: special tokens not in the vocabulary: {missing}")
    return SpecialTokenIds(ids[names["bos_token"]], ids[names["eos_token"]], ids[names["pad_token"]])
