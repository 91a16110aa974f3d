"""Prompts → text-encoder embeddings as A1111 builds them, and the per-step conditioning the CFG denoiser reads.

A1111 modules/prompt_parser.py and modules/sd_hijack_clip.py: prompt schedules, AND sub-prompts, emphasis,
75-token chunks with comma backtracking and
BREAK, encoding with clip skip and mean restoration; chunks are concatenated along the token axis (77·k tokens).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.backend import ExecutionBackend
from engine.bundle import Manifest
from engine.embedding_table import EmbeddingTable, Fix, unique_rows
from engine.prompt_parser import (
    BREAK_MARKER,
    AttentionSegment,
    extract_extra_networks,
    parse_prompt_attention,
    prompt_schedule,
    split_and,
)
from engine.textual_inversion import Embedding
from engine.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

CHUNK_TOKENS = 75
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


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


@dataclass(frozen=True)
class SdxlOptions:
    """SDXL's size and aesthetic conditioning (A1111 modules/sd_models_xl.py: get_learned_conditioning).

    `width`/`height` are the pass's image size (original = target size there); the pipeline sets them per pass.
    """

    width: int = 1024
    height: int = 1024
    crop_top: int = 0  # sdxl_crop_top
    crop_left: int = 0  # sdxl_crop_left
    high_aesthetic_score: float = 6.0  # sdxl_refiner_high_aesthetic_score (refiner, prompts)
    low_aesthetic_score: float = 2.5  # sdxl_refiner_low_aesthetic_score (refiner, negative prompts)
    clip_l_skip: bool = False  # sdxl_clip_l_skip


@dataclass(frozen=True)
class TextEncoderOptions:
    """The options that change how text becomes an embedding (A1111 option names in comments)."""

    clip_skip: int = 1  # CLIP_stop_at_last_layers
    emphasis: str = "Original"  # emphasis: one of EMPHASIS_MODES; an unknown name acts as "Original" (A1111)
    comma_padding_backtrack: int = 20  # comma_padding_backtrack
    sdxl: SdxlOptions = SdxlOptions()  # read by SDXL models only (engine/sdxl_conditioning.py)


@dataclass(frozen=True)
class PromptChunk:
    """77 token ids (BOS, 75 prompt tokens or padding, EOS), each token's emphasis multiplier and the
    textual-inversion embeddings whose placeholder ids (0) it holds (engine/embedding_table.py)."""

    tokens: tuple[int, ...]
    multipliers: tuple[float, ...]
    fixes: tuple[Fix, ...] = ()


class PromptEncoder:
    """Runs the text encoder the way A1111's CLIP wrapper does; results are cached by (texts, options)."""

    encodes_negatives_differently = False  # SDXL's does (engine/sdxl_conditioning.py)

    def __init__(self, backend: ExecutionBackend, tokenizer: ClipTokenizer, manifest: Manifest, cache_size: int = 32,
                 embeddings: EmbeddingTable | None = None):
        self._init_shared(backend, tokenizer, manifest, cache_size, embeddings)
        self.output_names = backend.output_names("text_encoder")
        self.input_dtypes = {s.name: s.dtype for s in backend.input_specs("text_encoder")}
        self.ids_dtype = self.input_dtypes.get("input_ids", "int64")

    def _init_shared(self, backend: ExecutionBackend, tokenizer: ClipTokenizer, manifest: Manifest, cache_size: int,
                     embeddings: EmbeddingTable | None) -> None:
        """What every prompt encoder holds, whatever text encoders its bundle has."""
        self.backend = backend
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.embeddings = embeddings if embeddings is not None else EmbeddingTable.for_bundle(
            getattr(backend, "bundle", None), manifest, tokenizer)
        self.comma_token = tokenizer.token_to_id(",</w>")
        self._cache: OrderedDict[tuple, tuple[np.ndarray, ...]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._warned_clip_skip = False

    def empty_chunk(self) -> PromptChunk:
        m = self.manifest
        return PromptChunk((m.bos_token_id,) + (m.eos_token_id,) * (CHUNK_TOKENS + 1), (1.0,) * (CHUNK_TOKENS + 2))

    def segments(self, line: str, emphasis: str) -> list[AttentionSegment]:
        if emphasis == "None":  # brackets stay literal text, and BREAK is not recognised either
            return [AttentionSegment(line, 1.0)]
        return parse_prompt_attention(line)

    def tokenize_line(self, line: str, options: TextEncoderOptions = TextEncoderOptions()) -> list[PromptChunk]:
        """One prompt text → its 77-token chunks (A1111 modules/sd_hijack_clip.py:
        FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line)."""
        m = self.manifest
        parsed = self.segments(line, options.emphasis)
        tokenized = self.tokenizer.encode_batch([s.text for s in parsed])
        table = self.embeddings if self.embeddings.has_embeddings else None
        chunks: list[PromptChunk] = []
        tokens: list[int] = []
        weights: list[float] = []
        fixes: list[Fix] = []
        last_comma = -1

        def close_chunk() -> None:
            nonlocal tokens, weights, last_comma, fixes
            pad = CHUNK_TOKENS - len(tokens)
            chunks.append(
                PromptChunk(
                    (m.bos_token_id, *tokens, *(m.eos_token_id,) * pad, m.eos_token_id),
                    (1.0, *weights, *(1.0,) * pad, 1.0),
                    tuple(fixes),
                )
            )
            tokens, weights, last_comma, fixes = [], [], -1, []

        for segment, ids in zip(parsed, tokenized, strict=True):
            if segment == BREAK_MARKER:
                close_chunk()
                continue
            position = 0
            while position < len(ids):
                token = ids[position]
                if token == self.comma_token:
                    last_comma = len(tokens)
                elif (
                    options.comma_padding_backtrack != 0
                    and len(tokens) == CHUNK_TOKENS
                    and last_comma != -1
                    and len(tokens) - last_comma <= options.comma_padding_backtrack
                ):
                    # Word wrap: the words after the chunk's last comma move on to the next chunk. A1111 moves
                    # tokens and multipliers only: an embedding's fix stays with the closed chunk (its rows then
                    # land in that chunk's padding) and its moved placeholders are plain token 0.
                    cut = last_comma + 1
                    moved_tokens, moved_weights = tokens[cut:], weights[cut:]
                    tokens, weights = tokens[:cut], weights[:cut]
                    close_chunk()
                    tokens, weights = moved_tokens, moved_weights
                if len(tokens) == CHUNK_TOKENS:
                    close_chunk()
                found = table.find_at(ids, position) if table is not None else None
                if found is None:
                    tokens.append(token)
                    weights.append(segment.weight)
                    position += 1
                    continue
                # A textual-inversion name: its placeholders count toward the 75 and never straddle two chunks.
                placed, length = found
                if len(tokens) + placed.n_vectors > CHUNK_TOKENS:
                    close_chunk()
                fixes.append((len(tokens), placed))
                tokens += [0] * placed.n_vectors
                weights += [segment.weight] * placed.n_vectors
                position += length
        if tokens or not chunks:
            close_chunk()
        return chunks

    def encode_chunks(self, chunks: np.ndarray, clip_skip: int = 1,
                      fixes: Sequence[Sequence[Fix]] | None = None) -> np.ndarray:
        """Token-id chunks [N, 77] (with each chunk's embedding fixes) → hidden states [N, 77, D], taking layer
        −clip_skip (then the final norm)."""
        feeds = self.embeddings.feeds("text_encoder", chunks, fixes, self.input_dtypes)
        outputs = self.backend.run("text_encoder", feeds)
        if self.manifest.architecture == "sd2":  # A1111's FrozenOpenCLIPEmbedder ignores CLIP_stop_at_last_layers
            clip_skip = 1
        if clip_skip <= 1:
            return outputs["last_hidden_state"].astype(np.float32)
        if "normed_hidden_states" not in outputs:
            if not self._warned_clip_skip:
                log.warning("bundle's text encoder has no per-layer output; clip skip %d ignored", clip_skip)
                self._warned_clip_skip = True
            return outputs["last_hidden_state"].astype(np.float32)
        layers = outputs["normed_hidden_states"]  # [N, L, 77, D]; entry j = final_norm(hidden_states[j + 1])
        index = max(layers.shape[1] - clip_skip, 0)
        return layers[:, index].astype(np.float32)

    def encode_texts(
        self, texts: Sequence[str], options: TextEncoderOptions = TextEncoderOptions(), negative: bool = False
    ) -> tuple[np.ndarray, ...]:
        """Texts encoded together as one batch → one embedding [77·k, D] each, k the batch's largest chunk count.

        The batch matters: shorter texts get empty chunks, and "Original" emphasis restores the mean over the
        whole batch tensor (A1111 encodes all texts of one prompt's schedule together). `negative`: the texts are
        a negative prompt's (SDXL encodes those differently; SD 1.x/2.x do not).
        """
        negative = negative and self.encodes_negatives_differently
        key = (tuple(texts), options, negative, self.embeddings.version)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        result = self._encode_batch(list(texts), options, negative)
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def token_grid(self, texts: list[str], options: TextEncoderOptions) -> tuple[np.ndarray, np.ndarray]:
        """Texts → token ids and emphasis multipliers [K, B, 77], K the largest chunk count (empty chunks fill)."""
        return self.chunk_grid(texts, options)[:2]

    def chunk_grid(self, texts: list[str], options: TextEncoderOptions) -> tuple[np.ndarray, np.ndarray, list]:
        """`token_grid` and each chunk's embedding fixes, flattened in [K, B] order."""
        lines = {t: self.tokenize_line(t, options) for t in dict.fromkeys(texts)}
        per_text = [lines[t] for t in texts]
        count = max(len(c) for c in per_text)
        empty = self.empty_chunk()
        grid = [[c[j] if j < len(c) else empty for c in per_text] for j in range(count)]  # [chunk][text]
        tokens = np.asarray([[c.tokens for c in row] for row in grid], dtype=np.int64)  # [K, B, 77]
        multipliers = np.asarray([[c.multipliers for c in row] for row in grid], dtype=np.float32)
        return tokens, multipliers, [c.fixes for row in grid for c in row]

    def _encode_batch(
        self, texts: list[str], options: TextEncoderOptions, negative: bool = False
    ) -> tuple[np.ndarray, ...]:
        tokens, multipliers, fixes = self.chunk_grid(texts, options)
        count = tokens.shape[0]
        m = self.manifest
        tokens = pad_after_eos(tokens, m.eos_token_id, m.pad_token_id)
        # Identical chunks (ids and embeddings) run through the encoder once; the batch keeps every copy for the
        # emphasis mean.
        rows, row_fixes, inverse = unique_rows(tokens.reshape(-1, tokens.shape[-1]), fixes)
        hidden = (self.encode_chunks(rows, options.clip_skip, row_fixes) if any(row_fixes)
                  else self.encode_chunks(rows, options.clip_skip))[inverse]
        z = hidden.reshape(*tokens.shape, hidden.shape[-1])  # [K, B, 77, D]
        z = np.stack([apply_emphasis(z[j], multipliers[j], options.emphasis) for j in range(count)])
        embeddings = z.transpose(1, 0, 2, 3).reshape(len(texts), count * tokens.shape[-1], z.shape[-1])
        out = tuple(np.ascontiguousarray(e) for e in embeddings)
        for e in out:
            e.flags.writeable = False  # shared through the cache
        return out

    def encode(self, prompts: Sequence[str], clip_skip: int = 1) -> list[np.ndarray]:
        """One embedding [77·k, D] per prompt, each on its own, as plain text (no emphasis, BREAK or word wrap)."""
        options = TextEncoderOptions(clip_skip=clip_skip, emphasis="None", comma_padding_backtrack=0)
        return [self.encode_texts([p], options)[0] for p in prompts]


def pad_after_eos(tokens: np.ndarray, eos_token_id: int, pad_token_id: int) -> np.ndarray:
    """OpenCLIP-style vocabularies pad after the first EOS with their own id (A1111 modules/sd_hijack_clip.py:
    FrozenCLIPEmbedderWithCustomWordsBase.process_tokens, `id_pad`)."""
    if pad_token_id == eos_token_id:
        return tokens
    after_eos = np.cumsum(tokens == eos_token_id, axis=-1) - (tokens == eos_token_id) > 0
    return np.where(after_eos, pad_token_id, tokens)


def apply_emphasis(z: np.ndarray, multipliers: np.ndarray, emphasis: str) -> np.ndarray:
    """z [B, 77, D] of one chunk index, multipliers [B, 77] → weighted z (A1111 modules/sd_hijack_clip.py:
    FrozenCLIPEmbedderWithCustomWordsBase.process_tokens)."""
    if emphasis in ("None", "Ignore") or np.all(multipliers == 1.0):
        return z  # unweighted: A1111's rescale is mean/mean of the same tensor, exactly 1
    weighted = z * multipliers[..., None]
    if emphasis == "No norm":
        return weighted
    # "Original": rescale so the mean over every value of the batch tensor is what it was before weighting.
    original_mean = z.mean(dtype=np.float64)
    new_mean = weighted.mean(dtype=np.float64)
    return (weighted * np.float32(original_mean / new_mean)).astype(np.float32)


@dataclass(frozen=True)
class ScheduledEmbedding:
    """An embedding used while the step counter is `<= end_at_step`."""

    end_at_step: int
    embedding: np.ndarray


EmbeddingSchedule = tuple[ScheduledEmbedding, ...]


def embedding_at(schedule: EmbeddingSchedule, step: int) -> np.ndarray:
    """The first entry whose end is not yet passed; past the last one, the *first* entry (A1111 quirk)."""
    for entry in schedule:
        if step <= entry.end_at_step:
            return entry.embedding
    return schedule[0].embedding


@dataclass(frozen=True)
class ScheduledConditioning:
    """Per image: positive sub-prompts as (schedule, AND weight) and the negative prompt's schedule."""

    cond: tuple[tuple[tuple[EmbeddingSchedule, float], ...], ...]
    uncond: tuple[EmbeddingSchedule, ...]

    def at(self, step: int) -> StepConditioning:
        return StepConditioning(
            cond=tuple(tuple((embedding_at(s, step), w) for s, w in image) for image in self.cond),
            uncond=tuple(embedding_at(s, step) for s in self.uncond),
        )


def encode_schedules(
    encoder: PromptEncoder,
    prompts: Sequence[str],
    steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
    options: TextEncoderOptions = TextEncoderOptions(),
    negative: bool = False,
) -> list[EmbeddingSchedule]:
    """A1111's get_learned_conditioning: each distinct prompt's schedule texts are encoded together."""
    encoded: dict[str, EmbeddingSchedule] = {}
    for prompt in dict.fromkeys(prompts):
        schedule = prompt_schedule(prompt, steps, hires_steps, use_old_scheduling)
        embeddings = encoder.encode_texts([s.text for s in schedule], options, negative)
        encoded[prompt] = tuple(
            ScheduledEmbedding(s.end_at_step, e) for s, e in zip(schedule, embeddings, strict=True)
        )
    return [encoded[p] for p in prompts]


def scheduled_conditioning(
    encoder: PromptEncoder,
    prompts: Sequence[str],
    negative_prompts: Sequence[str],
    steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
    options: TextEncoderOptions = TextEncoderOptions(),
) -> ScheduledConditioning:
    """Prompts and negative prompts of one batch → the conditioning schedule the CFG denoiser reads.

    `steps` is the pass's total step count (×2 for second-order samplers); for the hires pass it is the first
    pass's and `hires_steps` the second pass's. Extra-network tags are removed from the positive prompts (the
    negative prompts keep them as text, as in A1111); positive prompts are split on AND.
    """
    stripped = [extract_extra_networks(p)[0] for p in prompts]
    sub_prompts = [split_and(p) for p in stripped]
    flat = list(dict.fromkeys(text for parts in sub_prompts for text, _ in parts))
    cond_schedules = dict(
        zip(flat, encode_schedules(encoder, flat, steps, hires_steps, use_old_scheduling, options), strict=True)
    )
    uncond = encode_schedules(encoder, negative_prompts, steps, hires_steps, use_old_scheduling, options,
                              negative=True)
    return ScheduledConditioning(
        cond=tuple(tuple((cond_schedules[text], weight) for text, weight in parts) for parts in sub_prompts),
        uncond=tuple(uncond),
    )


def constant_conditioning(
    encoder: PromptEncoder, prompts: Sequence[str], negative_prompts: Sequence[str], clip_skip: int = 1
) -> ConstantConditioning:
    """Every prompt encoded as plain text, the same at every step (no prompt language)."""
    embeddings = encoder.encode(list(prompts) + list(negative_prompts), clip_skip)
    cond = embeddings[: len(prompts)]
    uncond = embeddings[len(prompts) :]
    return ConstantConditioning(StepConditioning(tuple(((c, 1.0),) for c in cond), tuple(uncond)))


# The step count `embeddings_used` looks at when not told: A1111's steps slider maximum, so every text a prompt
# schedule reaches within it counts.
USAGE_STEPS = 150


def embeddings_used(
    encoder: PromptEncoder,
    prompts: Sequence[str],
    negative_prompts: Sequence[str] = (),
    steps: int = USAGE_STEPS,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
    options: TextEncoderOptions = TextEncoderOptions(),
) -> tuple[Embedding, ...]:
    """The textual-inversion embeddings the prompts insert, in first-use order (A1111 collects them per encoded
    batch for `TI hashes`: modules/sd_hijack_clip.py, FrozenCLIPEmbedderWithCustomWordsBase.forward).

    `prompts` are read as positive prompts (extra-network tags removed, split on AND), `negative_prompts` as
    negative ones; each over its schedule's texts for `steps` (and `hires_steps`), as `scheduled_conditioning`
    encodes them. Pass the job's steps for the exact set; the default takes every text within USAGE_STEPS.
    """
    if not encoder.embeddings.has_embeddings:
        return ()
    texts = [text for p in prompts for text, _ in split_and(extract_extra_networks(p)[0])]
    texts += list(negative_prompts)
    used: dict[str, Embedding] = {}
    for text in dict.fromkeys(texts):
        for scheduled in prompt_schedule(text, steps, hires_steps, use_old_scheduling):
            for chunk in encoder.tokenize_line(scheduled.text, options):
                for _, placed in chunk.fixes:
                    used.setdefault(placed.embedding.name, placed.embedding)
    return tuple(used.values())
