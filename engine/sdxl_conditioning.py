"""SDXL prompts → conditioning as A1111 builds it (modules/sd_models_xl.py: get_learned_conditioning, and
modules/sd_hijack_clip.py for each of the two encoders).

Each encoder gets A1111's 75-token chunks with emphasis of its own (the same BPE, so the same chunks): CLIP-L's
hidden_states[11] (hidden_states[-clip_skip] with option sdxl_clip_l_skip), OpenCLIP bigG's penultimate layer
(hidden_states[-2]); both without the final LayerNorm, concatenated to 768 + 1280 = 2048 per token. The pooled
vector is bigG's projected pooled output of the first chunk. A negative prompt whose texts are all empty is
zeros for the context and the pooled vector (A1111's `force_zero_negative_prompt`), not the encoding of "".

An SDXL embedding travels through the conditioning schedules and the CFG denoiser as one array
[77·k, D + P + n]: the context (D) and, repeated on every token, the pooled vector (P) and the n time ids
(original size, crop, target size; the refiner: original size, crop, aesthetic score). Every row operation of
the CFG batch (AND repeats, token-length padding by repeating the last token, concatenation) then keeps each row's
pooled vector and time ids with it; engine/denoiser.py's UNet splits them into the UNet's inputs.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from engine.backend import ExecutionBackend
from engine.bundle import Manifest
from engine.conditioning import PromptEncoder, SdxlOptions, TextEncoderOptions, apply_emphasis, pad_after_eos
from engine.embedding_table import EmbeddingTable, Fix, unique_rows
from engine.tokenizer import ClipTokenizer

_HIDDEN = re.compile(r"hidden_states\.(\d+)$")


def time_ids(options: SdxlOptions, refiner: bool, negative: bool) -> np.ndarray:
    """The UNet's `time_ids` (diffusers' `add_time_ids`; A1111's size and aesthetic embedders' inputs)."""
    h, w = options.height, options.width
    if refiner:
        score = options.low_aesthetic_score if negative else options.high_aesthetic_score
        return np.asarray([h, w, options.crop_top, options.crop_left, score], dtype=np.float32)
    return np.asarray([h, w, options.crop_top, options.crop_left, h, w], dtype=np.float32)


def split_packed(context: np.ndarray, context_width: int, pooled_width: int) -> dict[str, np.ndarray]:
    """A packed SDXL batch [N, S, D + P + n] → the UNet's `encoder_hidden_states`, `text_embeds`, `time_ids`."""
    return {
        "encoder_hidden_states": context[..., :context_width],
        "text_embeds": context[:, 0, context_width : context_width + pooled_width],
        "time_ids": context[:, 0, context_width + pooled_width :],
    }


class SdxlPromptEncoder(PromptEncoder):
    """PromptEncoder for SDXL bundles (base: both encoders; refiner: bigG only), returning packed embeddings."""

    encodes_negatives_differently = True

    def __init__(self, backend: ExecutionBackend, tokenizer: ClipTokenizer, manifest: Manifest, cache_size: int = 32,
                 embeddings: EmbeddingTable | None = None):
        # Not PromptEncoder.__init__: that one opens the `text_encoder` component, which the refiner lacks.
        # Names are matched with the CLIP-L tokenizer (A1111); both encoders' BPE is the same here.
        self._init_shared(backend, tokenizer, manifest, cache_size, embeddings)
        self.refiner = manifest.architecture == "sdxl-refiner"
        self.encoders = ["text_encoder_2"] if manifest.text_hidden_size == 0 else ["text_encoder", "text_encoder_2"]
        self.hidden_names = {c: self._hidden_state_names(c) for c in self.encoders}
        self.input_dtypes = {c: {s.name: s.dtype for s in backend.input_specs(c)} for c in self.encoders}

    def _hidden_state_names(self, component: str) -> list[str]:
        names = [n for n in self.backend.output_names(component) if _HIDDEN.match(n)]
        if not names:
            raise ValueError(f"the bundle's {component} has no hidden_states.<i> outputs; re-export the model")
        return sorted(names, key=lambda n: int(_HIDDEN.match(n).group(1)))

    def _pad_id(self, component: str) -> int:
        m = self.manifest
        if component == "text_encoder_2" and m.tokenizer_2 is not None:
            return m.tokenizer_2.pad_token_id
        return m.pad_token_id

    def _run(self, component: str, tokens: np.ndarray, names: list[str], fixes: list[tuple[Fix, ...]]
             ) -> list[np.ndarray]:
        """tokens [R, 77] and each row's embedding fixes → the named outputs, identical rows encoded once."""
        rows, row_fixes, inverse = unique_rows(tokens, fixes)
        out = self.backend.run(component, self.embeddings.feeds(component, rows, row_fixes,
                                                                 self.input_dtypes[component]))
        return [out[n][inverse].astype(np.float32) for n in names]

    def _encode_batch(
        self, texts: list[str], options: TextEncoderOptions, negative: bool = False
    ) -> tuple[np.ndarray, ...]:
        tokens, multipliers, fixes = self.chunk_grid(texts, options)  # [K, B, 77]
        count, batch, length = tokens.shape
        eos = self.manifest.eos_token_id
        contexts = []
        pooled = None
        for component in self.encoders:
            ids = pad_after_eos(tokens, eos, self._pad_id(component)).reshape(-1, length)
            hidden = self.hidden_names[component]
            if component == "text_encoder_2":
                z, projected = self._run(component, ids, [hidden[-2], "text_embeds"], fixes)
                pooled = projected.reshape(count, batch, -1)[0]  # the first chunk's (A1111: zs[0].pooled)
            else:
                skip = options.clip_skip if options.sdxl.clip_l_skip else 2
                z = self._run(component, ids, [hidden[-max(skip, 1)]], fixes)[0]
            z = z.reshape(count, batch, length, -1)
            contexts.append(np.stack([apply_emphasis(z[j], multipliers[j], options.emphasis) for j in range(count)]))
        context = np.concatenate(contexts, axis=-1)  # [K, B, 77, D]
        if negative and all(t == "" for t in texts):
            context = np.zeros_like(context)
            pooled = np.zeros_like(pooled)
        context = context.transpose(1, 0, 2, 3).reshape(batch, count * length, -1)
        ids = time_ids(options.sdxl, self.refiner, negative)
        vector = np.concatenate([pooled, np.broadcast_to(ids, (batch, len(ids)))], axis=-1)  # [B, P + n]
        packed = np.concatenate([context, np.broadcast_to(vector[:, None], (batch, context.shape[1], vector.shape[1]))],
                                axis=-1)
        out = tuple(np.ascontiguousarray(e, dtype=np.float32) for e in packed)
        for e in out:
            e.flags.writeable = False  # shared through the cache
        return out


def sdxl_pass_options(options: TextEncoderOptions, manifest: Manifest, latent_shape: tuple[int, ...]) -> TextEncoderOptions:
    """The text options of one sampling pass: SDXL's size conditioning is that pass's image size (A1111 hands
    SdConditioning the first pass's width/height, the hires pass its upscaled size). Unchanged for SD 1.x/2.x."""
    if not manifest.is_sdxl:
        return options
    f = manifest.vae_scale_factor
    size = {"height": latent_shape[-2] * f, "width": latent_shape[-1] * f}
    return replace(options, sdxl=replace(options.sdxl, **size))
