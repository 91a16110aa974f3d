"""Prompts → text-encoder embeddings, and the per-step conditioning the CFG denoiser reads.

A prompt is tokenised, split into 75-token chunks that each get BOS/EOS and padding to 77, encoded, and the
chunks concatenated along the token axis (so long prompts give 154, 231, ... tokens), as A1111 does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.backend import ExecutionBackend
from engine.bundle import Manifest
from engine.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

CHUNK_TOKENS = 75


@dataclass(frozen=True)
class StepConditioning:
    """Conditioning for one denoiser call.

    cond[i] lists image i's positive sub-prompts as (embedding [T, D], AND weight); uncond[i] is its negative.
    """

    cond: tuple[tuple[tuple[np.ndarray, float], ...], ...]
    uncond: tuple[np.ndarray, ...]


class ConditioningSchedule(Protocol):
    def at(self, step: int) -> StepConditioning: ...


@dataclass(frozen=True)
class ConstantConditioning:
    """The same conditioning at every step (no prompt editing)."""

    conditioning: StepConditioning

    def at(self, step: int) -> StepConditioning:
        return self.conditioning


class PromptEncoder:
    """Runs the text encoder; identical prompts within one call are encoded once."""

    def __init__(self, backend: ExecutionBackend, tokenizer: ClipTokenizer, manifest: Manifest):
        self.backend = backend
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.output_names = backend.output_names("text_encoder")
        self.ids_dtype = {s.name: s.dtype for s in backend.input_specs("text_encoder")}.get("input_ids", "int64")

    def encode_chunks(self, chunks: np.ndarray, clip_skip: int = 1) -> np.ndarray:
        """Token-id chunks [N, 77] → hidden states [N, 77, D], taking layer −clip_skip (then the final norm)."""
        outputs = self.backend.run("text_encoder", {"input_ids": chunks.astype(self.ids_dtype)})
        if clip_skip <= 1:
            return outputs["last_hidden_state"].astype(np.float32)
        if "normed_hidden_states" not in outputs:
            log.warning("bundle's text encoder has no per-layer output; clip skip %d ignored", clip_skip)
            return outputs["last_hidden_state"].astype(np.float32)
        layers = outputs["normed_hidden_states"]  # [N, L, 77, D]; entry j = final_norm(hidden_states[j + 1])
        index = max(layers.shape[1] - clip_skip, 0)
        return layers[:, index].astype(np.float32)

    def chunk_tokens(self, token_ids: Sequence[int]) -> np.ndarray:
        """75-token chunks, each as [BOS, 75 tokens padded with EOS, EOS]; an empty prompt is one chunk."""
        m = self.manifest
        ids = list(token_ids)
        pieces = [ids[i : i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)] or [[]]
        rows = [[m.bos_token_id] + p + [m.eos_token_id] * (CHUNK_TOKENS + 1 - len(p)) for p in pieces]
        return np.asarray(rows, dtype=np.int64)

    def encode(self, prompts: Sequence[str], clip_skip: int = 1) -> list[np.ndarray]:
        """One embedding [77·k, D] per prompt."""
        unique = list(dict.fromkeys(prompts))
        encoded: dict[str, np.ndarray] = {}
        for prompt, ids in zip(unique, self.tokenizer.encode_batch(unique), strict=True):
            chunks = self.chunk_tokens(ids)
            hidden = self.encode_chunks(chunks, clip_skip)
            encoded[prompt] = hidden.reshape(-1, hidden.shape[-1])
        return [encoded[p] for p in prompts]


def constant_conditioning(
    encoder: PromptEncoder, prompts: Sequence[str], negative_prompts: Sequence[str], clip_skip: int = 1
) -> ConstantConditioning:
    embeddings = encoder.encode(list(prompts) + list(negative_prompts), clip_skip)
    cond = embeddings[: len(prompts)]
    uncond = embeddings[len(prompts) :]
    return ConstantConditioning(StepConditioning(tuple(((c, 1.0),) for c in cond), tuple(uncond)))
