"""A model's table of textual-inversion embeddings: name matching in the token stream and the text encoders'
`inputs_embeds` with the embeddings' rows in place (A1111 modules/textual_inversion/textual_inversion.py:
EmbeddingDatabase, modules/sd_hijack.py: EmbeddingsWithFixes).

Bundles whose text encoders take `inputs_embeds` (export/text_inputs_embeds.py) ship each encoder's token table
as an fp32 `.npy`, mapped read-only here: only the rows of the ids a prompt uses are ever read. Bundles without
it (older exports, optimum folders) keep the input_ids-only path and accept no embedding.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.bundle import Bundle, Manifest
from engine.textual_inversion import Embedding
from engine.tokenizer import ClipTokenizer

INPUTS_EMBEDS = "inputs_embeds"
MAX_VECTORS = 75  # one chunk's prompt tokens


@dataclass(frozen=True, eq=False)
class PlacedEmbedding:
    """An accepted embedding as this model inserts it: the vectors for each of its text encoders and the number
    of placeholder tokens it takes in a chunk (A1111's `Embedding.vectors`: SDXL counts clip_g's rows)."""

    embedding: Embedding
    vectors: Mapping[str, np.ndarray]
    n_vectors: int


# (offset among the chunk's 75 prompt tokens, embedding): A1111's PromptChunkFix.
Fix = tuple[int, PlacedEmbedding]


def encoder_widths(manifest: Manifest) -> dict[str, int]:
    """The text encoders of a model and their token widths, in the order SDXL concatenates them."""
    if manifest.is_sdxl:
        widths = {"text_encoder": manifest.text_hidden_size, "text_encoder_2": manifest.text_2_hidden_size}
        return {c: w for c, w in widths.items() if w > 0}  # the refiner has bigG only
    return {"text_encoder": manifest.text_hidden_size}


class EmbeddingTable:
    """The one embedding table of a model (A1111 keeps one global database, reloaded per model), shared by the
    pipelines over the same bundle (`Pipeline.with_backend`, `Pipeline.tiled`). `version` changes with every
    `set`, so prompt encoders key their caches on it."""

    def __init__(self, widths: Mapping[str, int], token_tables: Mapping[str, Path], tokenizer: ClipTokenizer):
        self.widths = dict(widths)
        self.token_table_files = dict(token_tables)
        self.tokenizer = tokenizer
        self.version = 0
        self._lookup: dict[int, list[tuple[tuple[int, ...], PlacedEmbedding]]] = {}
        self._tables: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_bundle(cls, bundle: Bundle | None, manifest: Manifest, tokenizer: ClipTokenizer) -> EmbeddingTable:
        tables = {c: bundle.path / f for c, f in manifest.text_token_tables.items()} if bundle is not None else {}
        return cls(encoder_widths(manifest), tables, tokenizer)

    def sibling(self) -> EmbeddingTable:
        """An empty table for the same model that shares the memory-mapped token tables (a job's own set of
        embeddings, e.g. with those bundled in its LoRAs, beside the model's table)."""
        other = EmbeddingTable(self.widths, self.token_table_files, self.tokenizer)
        other._tables = self._tables
        return other

    @property
    def can_insert(self) -> bool:
        """Every text encoder of the model has its token table (the bundle takes `inputs_embeds`)."""
        return all(c in self.token_table_files for c in self.widths)

    def placed(self, embedding: Embedding) -> PlacedEmbedding | None:
        """The embedding's vectors per text encoder of this model, or None when their widths do not match (A1111
        loads an embedding only when its width is the model's text embedding width; SDXL: clip_l + clip_g).
        A single array on a single-encoder model is used whatever its key (A1111: a plain tensor `vec`)."""
        if not self.can_insert:
            return None
        vectors = {c: np.asarray(v, dtype=np.float32) for c, v in embedding.vectors.items()}
        if len(vectors) == 1 and len(self.widths) == 1:
            vectors = {next(iter(self.widths)): next(iter(vectors.values()))}
        if set(vectors) != set(self.widths):
            return None
        for component, v in vectors.items():
            if v.ndim != 2 or v.shape[0] == 0 or v.shape[1] != self.widths[component]:
                return None
        count = vectors["text_encoder_2"].shape[0] if "text_encoder_2" in vectors else vectors["text_encoder"].shape[0]
        if count > MAX_VECTORS:
            return None  # A1111 loads it, then fails every prompt using it (a chunk over 77 tokens)
        return PlacedEmbedding(embedding, vectors, count)

    def accepts(self, embedding: Embedding) -> bool:
        return self.placed(embedding) is not None

    def set(self, embeddings: Mapping[str, Embedding]) -> None:
        """Replace the table. Names are tokenized (no BOS/EOS) and indexed by their first token, longest first;
        equal lengths keep the mapping's order (A1111 register_embedding_by_name: a stable sort by length)."""
        lookup: dict[int, list[tuple[tuple[int, ...], PlacedEmbedding]]] = {}
        for name, embedding in embeddings.items():
            placed = self.placed(embedding)
            ids = tuple(self.tokenizer.encode(name)) if placed is not None else ()
            if ids:
                lookup.setdefault(ids[0], []).append((ids, placed))
        for entries in lookup.values():
            entries.sort(key=lambda entry: len(entry[0]), reverse=True)
        with self._lock:
            self._lookup = lookup
            self.version += 1

    @property
    def has_embeddings(self) -> bool:
        return bool(self._lookup)

    def find_at(self, tokens: Sequence[int], position: int) -> tuple[PlacedEmbedding, int] | None:
        """The embedding whose name's tokens start at `position`, and that length (A1111
        find_embedding_at_position)."""
        for ids, placed in self._lookup.get(tokens[position], ()):
            if tuple(tokens[position : position + len(ids)]) == ids:
                return placed, len(ids)
        return None

    def token_table(self, component: str) -> np.ndarray:
        table = self._tables.get(component)
        if table is None:
            file = self.token_table_files.get(component)
            if file is None:
                raise ValueError(f"the bundle's {component} takes inputs_embeds but the manifest names no token "
                                 "table for it; re-export the model")
            if not Path(file).is_file():
                raise FileNotFoundError(f"{file} is missing: it holds the {component} token table. Copy the whole "
                                        "bundle folder again, or re-export the model.")
            # Memory-mapped: 150–250 MB per full-size encoder that cost no RSS until rows are read.
            table = self._tables[component] = np.load(file, mmap_mode="r")
        return table

    def feeds(self, component: str, ids: np.ndarray, fixes: Sequence[Sequence[Fix]] | None,
              input_dtypes: Mapping[str, str]) -> dict[str, np.ndarray]:
        """The text encoder's inputs for token-id rows [R, S] and each row's fixes: `input_ids` alone for
        input_ids-only graphs, else also `inputs_embeds` = the token table's rows with each fix's vectors at
        offset+1 … offset+n (+1 for BOS), truncated at the last position (A1111 EmbeddingsWithFixes.forward)."""
        feeds = {"input_ids": ids.astype(input_dtypes.get("input_ids", "int64"))}
        if INPUTS_EMBEDS not in input_dtypes:
            return feeds
        embeds = np.asarray(self.token_table(component)[ids], dtype=np.float32)  # [R, S, D], a copy
        for row, row_fixes in zip(embeds, fixes or (), strict=False):
            for offset, placed in row_fixes:
                vectors = placed.vectors.get(component)
                if vectors is None:
                    continue
                n = min(row.shape[0] - offset - 1, vectors.shape[0])
                row[offset + 1 : offset + 1 + n] = vectors[:n]
        feeds[INPUTS_EMBEDS] = embeds.astype(input_dtypes[INPUTS_EMBEDS], copy=False)
        return feeds


def unique_rows(tokens: np.ndarray, fixes: Sequence[Sequence[Fix]]) -> tuple[np.ndarray, list, np.ndarray]:
    """Distinct chunks of [R, S] token rows and their fixes → (rows, their fixes, inverse index [R]).

    Chunks are told apart by their ids *and* their fixes: two embeddings' placeholder ids are both zeros. Without
    any fix this is exactly np.unique over the rows (sorted), as before textual inversion."""
    if not any(fixes):
        rows, inverse = np.unique(tokens, axis=0, return_inverse=True)
        return rows, [()] * len(rows), inverse.reshape(-1)
    index: dict[tuple, int] = {}
    inverse = []
    firsts = []
    for r, (row, row_fixes) in enumerate(zip(tokens, fixes, strict=True)):
        key = (row.tobytes(), tuple((offset, id(placed)) for offset, placed in row_fixes))
        if key not in index:
            index[key] = len(index)
            firsts.append(r)
        inverse.append(index[key])
    return tokens[firsts], [tuple(fixes[r]) for r in firsts], np.asarray(inverse, dtype=np.int64)
