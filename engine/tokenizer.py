"""CLIP's BPE tokenizer on the `tokenizers` library, built from a bundle's `vocab.json` + `merges.txt`."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

# CLIP's pre-tokenisation pattern (the same one transformers' CLIP converter uses).
_CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class ClipTokenizer:
    """Text → token ids without BOS/EOS (A1111 adds those per 75-token chunk)."""

    def __init__(self, folder: str | Path, bos_token_id: int = 49406, eos_token_id: int = 49407):
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
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        self._tokenizer = tok
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.vocab = tok.get_vocab()

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text.strip(), add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch([t.strip() for t in texts], add_special_tokens=False)]

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)
