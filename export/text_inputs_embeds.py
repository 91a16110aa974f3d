"""Text encoders exported with an `inputs_embeds` input, for textual inversion (issue #15).

A1111 inserts an embedding's vectors by replacing rows of the token-embedding output (modules/sd_hijack.py:
EmbeddingsWithFixes wraps CLIP's `token_embedding`). The exported graph therefore takes those rows as an input:
`input_ids` int64 [N, S] (still needed for the causal mask's shape and for the pooled output's EOS position) and
`inputs_embeds` float32 [N, S, D] = the token table's rows for those ids, some replaced by the engine. The token
table itself ships beside the component as `token_embeddings.npy` (fp32 [vocab, D]), which the engine maps
read-only, and the graph no longer holds it (same bundle size). Outputs are unchanged.

Every prompt goes through `inputs_embeds`, with or without an embedding: measured on a full-size SD 1.5 CLIP-L
(random weights, ORT 2 threads, batch 2, interleaved runs on a loaded machine) the input_ids-only graph took
402 ms median (323 min) and this one 422 ms (315 min) including the row gather from the mapped table (0.03 ms);
the outputs were bit-identical, and mapping the 152 MB table added no RSS.

transformers' `CLIPTextTransformer.forward` takes no `inputs_embeds` (4.57), so the token embedding module is
swapped, while tracing, for one that returns the rows the wrapper was given: every other step (position
embeddings, causal mask, layers, final norm, pooling on `input_ids`, projection) is transformers' own code.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np

TOKEN_TABLE_FILE = "token_embeddings.npy"
INPUTS_EMBEDS = "inputs_embeds"


def _token_rows_module():
    import torch

    class TokenRows(torch.nn.Module):
        """Stands in for CLIP's `token_embedding` while tracing: returns the rows fed to the wrapper."""

        def __init__(self):
            super().__init__()
            self.rows = None

        def forward(self, input_ids):
            return self.rows

    return TokenRows


def embeds_wrapper(ids_wrapper, text_encoder):
    """A module taking (input_ids, inputs_embeds) and returning what `ids_wrapper(input_ids)` returns, with the
    token embedding's output replaced by `inputs_embeds`. Use it inside `token_rows_swapped(text_encoder, ...)`."""
    import torch

    class EmbedsTextEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = ids_wrapper
            self.token_rows = _token_rows_module()()

        def forward(self, input_ids, inputs_embeds):
            self.token_rows.rows = inputs_embeds
            try:
                return self.inner(input_ids)
            finally:
                self.token_rows.rows = None

    return EmbedsTextEncoder()


@contextmanager
def token_rows_swapped(text_encoder, wrapper):
    """Within the block, `text_encoder`'s token embedding is `wrapper.token_rows` (so the table is not traced
    into the graph); the original module is put back afterwards, whatever happens."""
    embeddings = text_encoder.text_model.embeddings
    original = embeddings.token_embedding
    embeddings.token_embedding = wrapper.token_rows
    try:
        yield
    finally:
        embeddings.token_embedding = original


def trace_inputs(text_encoder, ids) -> tuple:
    """(input_ids, inputs_embeds) for tracing: the table's rows of `ids`."""
    import torch

    with torch.no_grad():
        return ids, text_encoder.text_model.embeddings.token_embedding(ids)


def save_token_table(text_encoder, folder: Path) -> str:
    """Write the encoder's token table (fp32 [vocab, D]) as `folder/token_embeddings.npy`; returns the name."""
    weight = text_encoder.text_model.embeddings.token_embedding.weight.detach().cpu().float().numpy()
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / TOKEN_TABLE_FILE, np.ascontiguousarray(weight, dtype=np.float32))
    return TOKEN_TABLE_FILE


def export_text_encoder(export, ids_wrapper, text_encoder, ids, path: Path, ids_axes: dict, outputs: dict,
                        external_threshold: int | None, inputs_embeds: bool = True) -> tuple[dict, str | None]:
    """Export one text encoder through `export` (export/onnx_export.py's `_export`), with `inputs_embeds` unless
    told otherwise (the input_ids-only graph of older bundles). Returns (its io entry, token table file or None)."""
    if not inputs_embeds:
        return export(ids_wrapper, (ids,), path, {"input_ids": ids_axes}, outputs, external_threshold), None
    wrapper = embeds_wrapper(ids_wrapper, text_encoder)
    args = trace_inputs(text_encoder, ids)
    embeds_axes = {k: v for k, v in ids_axes.items()}
    with token_rows_swapped(text_encoder, wrapper):
        io = export(wrapper, args, path, {"input_ids": ids_axes, INPUTS_EMBEDS: embeds_axes}, outputs,
                    external_threshold)
    table = save_token_table(text_encoder, path.parent)
    return io, f"{path.parent.name}/{table}"
