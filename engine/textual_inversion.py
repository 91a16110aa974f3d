"""Textual-inversion embeddings as the engine sees them: named vectors per text encoder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Embedding:
    """One embedding file's vectors (A1111 modules/textual_inversion/textual_inversion.py: Embedding).

    `vectors` is keyed by the bundle's text-encoder component: "text_encoder" (SD 1.x/2.x, SDXL's clip_l) and
    "text_encoder_2" (SDXL's clip_g); each value is (n_vectors, hidden width) float32. `shorthash` is the first 12
    hex digits of the file's sha256 (what `TI hashes` writes); `step`, `sd_checkpoint` and `sd_checkpoint_name` are
    the training metadata `/sdapi/v1/embeddings` reports (None when the file has none). `network`: for an
    embedding bundled in a LoRA file (`bundle_emb.*`), the LoRA's name as the prompt wrote it; A1111 writes that
    name, not a file hash, as its `TI hashes` entry (extensions-builtin/Lora/networks.py: BundledTIHash).
    """

    name: str
    vectors: Mapping[str, np.ndarray] = field(default_factory=dict)
    filename: str = ""
    shorthash: str = ""
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    network: str = ""

    @property
    def n_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0] if self.vectors else 0
