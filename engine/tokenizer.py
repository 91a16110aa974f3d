"""CLIP's BPE tokenizer on the `tokenizers` library, built from a bundle's `vocab.json` + `merges.txt`."""

from __future__ import annotations

import re
from pathlib import Path

import ftfy
from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from engine.special_tokens import read_special_token_ids

# Python's \s (also \x1c-\x1f), as transformers' whitespace_clean uses it.
_WHITESPACE = re.compile(r"\s+")

_SPECIAL = re.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")

# CLIP's pre-tokenisation pattern (the same one transformers' CLIP converter uses).
_CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class ClipTokenizer:
    """Text → token ids without BOS/EOS (A1111 adds those per 75-token chunk)."""

    def __init__(self, folder: str | Path, bos_token_id: int | None = None, eos_token_id: int | None = None):
        """Special ids not given are read from the folder's tokenizer files (never from a text encoder config)."""
        folder = Path(folder)
        model = BPE.from_file(
            str(folder / "vocab.json"),
            str(folder / "merges.txt"),
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token="<|endoftext|>",
        )
        tok = Tokenizer(model)
        # Cleaning happens in `clean` (Python), as transformers' CLIPTokenizer does it; no normalizer here.
        tok.add_special_tokens([AddedToken(t, normalized=False) for t in ("<|startoftext|>", "<|endoftext|>")])
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        self._tokenizer = tok
        special = read_special_token_ids(folder) if bos_token_id is None or eos_token_id is None else None
        self.bos_token_id = special.bos_token_id if bos_token_id is None else bos_token_id
        self.eos_token_id = special.eos_token_id if eos_token_id is None else eos_token_id
        self.vocab = tok.get_vocab()

    @staticmethod
    def clean(text: str) -> str:
        """transformers' CLIPTokenizer cleaning with ftfy installed, as in A1111's environment: ftfy's fix_text
        (curly quotes, HTML entities, ligatures, full-width forms, NFC), whitespace runs → one space, lower case."""
        return _WHITESPACE.sub(" ", ftfy.fix_text(text)).strip().lower()

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Like transformers, split off literal special tokens first and clean the pieces between them one by one
        # (ftfy's HTML unescaping depends on whether its input holds a "<").
        pieces = [[p for p in _SPECIAL.split(t) if p] for t in texts]
        flat = [self.clean(p) for ps in pieces for p in ps]
        encoded = iter(self._tokenizer.encode_batch(flat, add_special_tokens=False))
        return [[i for _ in ps for i in next(encoded).ids] for ps in pieces]

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)
