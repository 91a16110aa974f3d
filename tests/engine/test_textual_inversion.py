"""Textual inversion in the engine against an independent re-implementation of A1111's insertion (A1111
modules/sd_hijack_clip.py: tokenize_line; modules/textual_inversion/textual_inversion.py:
register_embedding_by_name, find_embedding_at_position; modules/sd_hijack.py: EmbeddingsWithFixes) driving
transformers' CLIP text models, whose token-embedding output is replaced by a forward hook as A1111 does.

The demo encoder's final LayerNorm has bias 0, so "Original" emphasis divides ~0 by ~0 there (see
test_conditioning.py); emphasis is checked with "No norm", which weights the same rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.conditioning import TextEncoderOptions
from engine.textual_inversion import Embedding

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BREAK = "BREAK"
ATOL = 1e-5
NO_NORM = TextEncoderOptions(emphasis="No norm")


def vectors(n: int, width: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, width)) * 0.5).astype(np.float32)


# --- the reference: A1111's algorithm, written here ------------------------------------------------------------


def reference_lookup(tokenizer, names: dict[str, int]) -> dict[int, list[tuple[list[int], str, int]]]:
    """register_embedding_by_name: name → ids (no BOS/EOS), indexed by the first id, longest first (stable)."""
    lookup: dict[int, list] = {}
    for name, n_vectors in names.items():
        ids = tokenizer(name, add_special_tokens=False)["input_ids"]
        lookup.setdefault(ids[0], []).append((ids, name, n_vectors))
    return {k: sorted(v, key=lambda e: len(e[0]), reverse=True) for k, v in lookup.items()}


def reference_chunks(tokenizer, segments, lookup, backtrack=20):
    """tokenize_line over pre-parsed (text, weight) segments → [(ids, multipliers, [(offset, name)])]."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks = []
    chunk = {"t": [], "m": [], "f": []}
    last_comma = -1

    def next_chunk():
        nonlocal chunk, last_comma
        to_add = 75 - len(chunk["t"])
        chunks.append(([bos] + chunk["t"] + [eos] * to_add + [eos], [1.0] + chunk["m"] + [1.0] * to_add + [1.0],
                       chunk["f"]))
        chunk = {"t": [], "m": [], "f": []}
        last_comma = -1

    for seg in segments:
        if seg == BREAK:
            next_chunk()
            continue
        text, weight = seg
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                last_comma = len(chunk["t"])
            elif backtrack and len(chunk["t"]) == 75 and last_comma != -1 and 75 - last_comma <= backtrack:
                at = last_comma + 1
                moved_t, moved_m = chunk["t"][at:], chunk["m"][at:]
                chunk["t"], chunk["m"] = chunk["t"][:at], chunk["m"][:at]
                next_chunk()
                chunk["t"], chunk["m"] = moved_t, moved_m
            if len(chunk["t"]) == 75:
                next_chunk()
            match = next(((ids, name, n) for ids, name, n in lookup.get(token, [])
                          if tokens[position:position + len(ids)] == ids), None)
            if match is None:
                chunk["t"].append(token)
                chunk["m"].append(weight)
                position += 1
                continue
            ids, name, n = match
            if len(chunk["t"]) + n > 75:
                next_chunk()
            chunk["f"].append((len(chunk["t"]), name))
            chunk["t"] += [0] * n
            chunk["m"] += [weight] * n
            position += len(ids)
    if chunk["t"] or not chunks:
        next_chunk()
    return chunks


class ReplacedRows:
    """EmbeddingsWithFixes as a forward hook on `token_embedding`: rows offset+1 … replaced, cut at 77."""

    def __init__(self, module, fixes_per_row, vectors_by_name):
        self.fixes, self.vectors = fixes_per_row, vectors_by_name
        self.handle = module.register_forward_hook(self)

    def __call__(self, _module, _inputs, output):
        out = output.clone()
        for r, fixes in enumerate(self.fixes):
            for offset, name in fixes:
                vec = torch.from_numpy(self.vectors[name])
                n = min(out.shape[1] - offset - 1, vec.shape[0])
                out[r, offset + 1:offset + 1 + n] = vec[:n]
        return out


@torch.no_grad()
def reference_encode(tokenizer, model, segments, vectors_by_name, emphasis="No norm", pad_id=None):
    """One text → [77·k, D] (SD 1.x: last_hidden_state; weighted without mean restoration)."""
    lookup = reference_lookup(tokenizer, {n: v.shape[0] for n, v in vectors_by_name.items()})
    chunks = reference_chunks(tokenizer, segments, lookup)
    ids = torch.tensor([c[0] for c in chunks])
    hook = ReplacedRows(model.text_model.embeddings.token_embedding, [c[2] for c in chunks], vectors_by_name)
    try:
        z = model(input_ids=ids).last_hidden_state
    finally:
        hook.handle.remove()
    if emphasis == "No norm":
        z = z * torch.tensor([c[1] for c in chunks])[:, :, None]
    return z.reshape(-1, z.shape[-1]).numpy(), chunks


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(demo_diffusers_dir: Path):
    torch.set_num_threads(1)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(demo_diffusers_dir / "tokenizer")
    model = transformers.CLIPTextModel.from_pretrained(demo_diffusers_dir / "text_encoder").eval()
    return tokenizer, model


@pytest.fixture(scope="module")
def pipeline(demo_bundle: Path):
    """Our own pipeline on the demo bundle: the session-wide one must not see these embeddings."""
    from engine.pipeline import Pipeline

    return Pipeline.from_path(demo_bundle)


@pytest.fixture(scope="module")
def legacy_pipeline(demo_diffusers_dir: Path, tmp_path_factory):
    """The demo model exported as before textual inversion: an input_ids-only text encoder, no token table."""
    from diffusers import StableDiffusionPipeline

    from engine.pipeline import Pipeline
    from export.onnx_export import export_pipeline

    out = tmp_path_factory.mktemp("legacy") / "bundle"
    pipe = StableDiffusionPipeline.from_pretrained(demo_diffusers_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    export_pipeline(pipe, out, name="legacy", text_inputs_embeds=False)
    return Pipeline.from_path(out)


WIDTH = 32  # the demo text encoder's width
TWO = vectors(2, WIDTH, seed=1)
THREE = vectors(3, WIDTH, seed=2)


def encode(pipeline, text: str, options: TextEncoderOptions = NO_NORM) -> np.ndarray:
    return pipeline.prompt_encoder.encode_texts([text], options)[0]


# --- (a) insertion equals A1111's on torch -------------------------------------------------------------------


def test_two_vector_embedding_changes_the_conditioning_as_a1111(pipeline, reference):
    pipeline.set_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": TWO})})
    ours = encode(pipeline, "a photo of sksdog on a beach")
    ref, chunks = reference_encode(*reference, [("a photo of sksdog on a beach", 1.0)], {"sksdog": TWO})
    assert [c[2] for c in chunks] == [[(3, "sksdog")]]  # placeholders after "a photo of"
    assert pipeline.prompt_encoder.tokenize_line("a photo of sksdog on a beach")[0].tokens == tuple(chunks[0][0])
    assert chunks[0][0][4:6] == [0, 0]
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    # and the embedding really changed it
    plain, _ = reference_encode(*reference, [("a photo of sksdog on a beach", 1.0)], {})
    assert np.abs(plain - ref).max() > 1e-2


def test_emphasis_weights_the_embeddings_rows(pipeline, reference):
    pipeline.set_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": TWO})})
    prompt = "a (sksdog:1.5) and [sksdog] in the park"
    segments = [("a ", 1.0), ("sksdog", 1.5), (" and ", 1.0), ("sksdog", 1 / 1.1), (" in the park", 1.0)]
    ours = encode(pipeline, prompt)
    ref, chunks = reference_encode(*reference, segments, {"sksdog": TWO})
    assert chunks[0][1][2:4] == [1.5, 1.5] and chunks[0][2] == [(1, "sksdog"), (4, "sksdog")]
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_an_embedding_that_does_not_fit_closes_the_chunk(pipeline, reference):
    pipeline.set_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": THREE})})
    words = " ".join(["cat"] * 73)  # 73 tokens: three placeholders do not fit in the first chunk's 75
    prompt = f"{words} sksdog dog"
    ours = encode(pipeline, prompt)
    ref, chunks = reference_encode(*reference, [(prompt, 1.0)], {"sksdog": THREE})
    assert len(chunks) == 2 and chunks[0][2] == [] and chunks[1][2] == [(0, "sksdog")]
    assert chunks[0][0][74:] == [49407] * 3  # the first chunk padded after its 73 words
    assert ours.shape == (154, WIDTH)
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    chunk = pipeline.prompt_encoder.tokenize_line(prompt)[1]
    assert chunk.tokens[1:5] == (0, 0, 0, chunks[1][0][4])


def test_an_embedding_that_just_fits_stays(pipeline, reference):
    pipeline.set_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": TWO})})
    prompt = " ".join(["cat"] * 73) + " sksdog dog"
    ours = encode(pipeline, prompt)
    ref, chunks = reference_encode(*reference, [(prompt, 1.0)], {"sksdog": TWO})
    assert chunks[0][2] == [(73, "sksdog")] and len(chunks) == 2
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_word_wrap_moves_placeholders_but_leaves_the_fix_as_a1111_does(pipeline, reference):
    """Comma backtracking moves tokens and multipliers, not fixes: the vectors land in the closed chunk's padding
    and the moved placeholders stay token 0 (A1111 tokenize_line)."""
    pipeline.set_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": TWO})})
    prompt = " ".join(["cat"] * 70) + ", sksdog dog dog dog"
    ours = encode(pipeline, prompt)
    ref, chunks = reference_encode(*reference, [(prompt, 1.0)], {"sksdog": TWO})
    assert chunks[0][2] == [(71, "sksdog")] and chunks[1][2] == [] and chunks[1][0][1:3] == [0, 0]
    assert chunks[0][0][72:] == [49407] * 5  # the fix's rows 72–73 are padding positions now
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_matching_is_case_insensitive_on_tokens(pipeline, reference):
    pipeline.set_embeddings({"SksDog": Embedding("SksDog", {"text_encoder": TWO})})
    for prompt in ("a SKSDOG", "a sksdog", "a SksDog"):
        ours = encode(pipeline, prompt)
        ref, chunks = reference_encode(*reference, [(prompt, 1.0)], {"SksDog": TWO})
        assert chunks[0][2] == [(1, "SksDog")]
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    assert [e.name for e in pipeline.embeddings_used(["a SKSDOG"])] == ["SksDog"]


def test_a_name_glued_into_a_longer_word_does_not_match(pipeline, reference):
    tokenizer, _ = reference
    pipeline.set_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": TWO})})
    name = tokenizer("sksdog", add_special_tokens=False)["input_ids"]
    for prompt in ("a sksdogs", "a sksdoggy"):
        glued = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert all(glued[i:i + len(name)] != name for i in range(len(glued)))
        assert pipeline.prompt_encoder.tokenize_line(prompt)[0].fixes == ()
        assert pipeline.embeddings_used([prompt]) == ()
        plain, _ = reference_encode(*reference, [(prompt, 1.0)], {})
        np.testing.assert_allclose(encode(pipeline, prompt), plain, atol=ATOL, rtol=0)
    # Matching is on tokens, not words: a prefix BPE splits off ("x" + "sk" "s" "dog") leaves the name's tokens.
    assert [f[0] for f in pipeline.prompt_encoder.tokenize_line("a xsksdog")[0].fixes] == [2]


def test_longest_name_wins_and_names_of_several_tokens_match(pipeline, reference):
    tokenizer, _ = reference
    assert len(tokenizer("sks dog", add_special_tokens=False)["input_ids"]) == 2
    table = {"sks": Embedding("sks", {"text_encoder": THREE}), "sks dog": Embedding("sks dog", {"text_encoder": TWO})}
    pipeline.set_embeddings(table)
    prompt = "sks dog and sks cat"
    ours = encode(pipeline, prompt)
    ref, chunks = reference_encode(*reference, [(prompt, 1.0)], {"sks": THREE, "sks dog": TWO})
    assert chunks[0][2] == [(0, "sks dog"), (3, "sks")]
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    assert [e.name for e in pipeline.embeddings_used([prompt])] == ["sks dog", "sks"]


def test_same_ids_with_different_embeddings_do_not_collide(pipeline, reference):
    """Both prompts become BOS, 0, 0, EOS…: the chunk dedup and the cache must tell them apart."""
    pipeline.set_embeddings({"alpha": Embedding("alpha", {"text_encoder": TWO}),
                             "beta": Embedding("beta", {"text_encoder": vectors(2, WIDTH, seed=9)})})
    both = pipeline.prompt_encoder.encode_texts(["alpha", "beta"], NO_NORM)
    for text, ours in zip(["alpha", "beta"], both, strict=True):
        ref, _ = reference_encode(*reference, [(text, 1.0)], {"alpha": TWO, "beta": vectors(2, WIDTH, seed=9)})
        np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    assert np.abs(both[0] - both[1]).max() > 1e-2
    # a new table under the same name is not served from the cache
    pipeline.set_embeddings({"alpha": Embedding("alpha", {"text_encoder": THREE[:2]})})
    ref, _ = reference_encode(*reference, [("alpha", 1.0)], {"alpha": THREE[:2]})
    np.testing.assert_allclose(pipeline.prompt_encoder.encode_texts(["alpha"], NO_NORM)[0], ref, atol=ATOL, rtol=0)


def test_pipelines_of_the_same_model_share_the_table(pipeline, reference):
    pipeline.set_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": TWO})})
    other = pipeline.with_backend(pipeline.backend)
    tiled = pipeline.tiled()
    for p in (other, tiled):
        assert p.embedding_table is pipeline.embedding_table
        assert p.prompt_encoder.tokenize_line("sksdog")[0].tokens[1:3] == (0, 0)
    before = encode(other, "sksdog")
    pipeline.set_embeddings({})
    after = encode(other, "sksdog")  # the other pipeline's cached encoding is not reused
    plain, _ = reference_encode(*reference, [("sksdog", 1.0)], {})
    np.testing.assert_allclose(after, plain, atol=ATOL, rtol=0)
    assert np.abs(before - after).max() > 1e-2


def test_embeddings_used_follows_schedules_and_breaks_in_first_use_order(pipeline):
    names = ["aaa", "bbb", "ccc", "ddd"]
    pipeline.set_embeddings({n: Embedding(n, {"text_encoder": TWO}, shorthash=n * 4) for n in names})
    used = pipeline.embeddings_used(["[ccc:bbb:5] BREAK x <lora:aaa:1> AND ddd"], negative_prompts=["aaa"],
                                    steps=20)
    assert [e.name for e in used] == ["ccc", "bbb", "ddd", "aaa"]
    assert [e.name for e in pipeline.embeddings_used(["[ccc:bbb:50]"], steps=20)] == ["ccc"]
    assert [e.name for e in pipeline.embeddings_used(["[ccc|bbb] zzz"])] == ["ccc", "bbb"]


def test_embeddings_of_another_width_are_ignored(pipeline, reference):
    wide = Embedding("sksdog", {"text_encoder": vectors(2, 768, seed=3)})
    sdxl = Embedding("sksdog", {"text_encoder": TWO, "text_encoder_2": vectors(2, 1280, seed=3)})
    assert not pipeline.accepts_embedding(wide) and not pipeline.accepts_embedding(sdxl)
    assert pipeline.accepts_embedding(Embedding("x", {"text_encoder": TWO}))
    assert pipeline.accepts_embedding(Embedding("x", {"text_encoder": vectors(75, WIDTH, seed=1)}))
    assert not pipeline.accepts_embedding(Embedding("x", {"text_encoder": vectors(76, WIDTH, seed=1)}))
    pipeline.set_embeddings({"sksdog": wide})
    plain, _ = reference_encode(*reference, [("a sksdog", 1.0)], {})
    np.testing.assert_allclose(encode(pipeline, "a sksdog"), plain, atol=ATOL, rtol=0)
    assert pipeline.embeddings_used(["a sksdog"]) == ()


def test_token_table_is_memory_mapped(pipeline):
    table = pipeline.embedding_table.token_table("text_encoder")
    assert isinstance(table, np.memmap) and table.shape == (49408, WIDTH) and table.dtype == np.float32


def test_txt2img_with_an_embedding_feeds_the_unet_its_conditioning(pipeline, monkeypatch):
    """Through the sampling loop: the UNet's context is the prompt encoder's output with the embedding."""
    from engine.plan import GenerationPlan

    pipeline.set_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": TWO})})
    contexts = []
    run = pipeline.backend.run

    def recording(component, inputs):
        if component == "unet":
            contexts.append(inputs["encoder_hidden_states"].copy())
        return run(component, inputs)

    monkeypatch.setattr(pipeline.backend, "run", recording)
    plan = GenerationPlan(prompts=("a sksdog",), negative_prompts=("",), seeds=(1,), subseeds=(1,), width=64,
                          height=64, steps=2, cfg_scale=7.0, sampler="Euler", scheduler="automatic")
    pipeline.txt2img(plan)
    expected = pipeline.prompt_encoder.encode_texts(["a sksdog"])[0]
    assert any(np.array_equal(c[i], expected) for c in contexts for i in range(len(c)))


# --- (b) prompts without an embedding: bit-identical to the input_ids-only graph ------------------------------


PLAIN_PROMPTS = ["a red circle", "a (big:1.3) dog, [small] cat BREAK on a beach", "", " ".join(["word,"] * 60)]


@pytest.mark.parametrize("emphasis", ["Original", "No norm"])
def test_prompts_without_embeddings_equal_the_input_ids_graph_bit_for_bit(pipeline, legacy_pipeline, emphasis):
    assert legacy_pipeline.manifest.text_token_tables == {}
    assert [s.name for s in legacy_pipeline.backend.input_specs("text_encoder")] == ["input_ids"]
    options = TextEncoderOptions(emphasis=emphasis)
    pipeline.set_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": TWO})})  # present, unused
    for prompt in PLAIN_PROMPTS:
        ours = pipeline.prompt_encoder.encode_texts([prompt, "x"], options)
        legacy = legacy_pipeline.prompt_encoder.encode_texts([prompt, "x"], options)
        for a, b in zip(ours, legacy, strict=True):
            np.testing.assert_array_equal(a, b)


def test_older_bundles_accept_no_embedding_and_keep_the_text(legacy_pipeline):
    embedding = Embedding("sksdog", {"text_encoder": TWO})
    assert not legacy_pipeline.accepts_embedding(embedding)
    before = legacy_pipeline.prompt_encoder.encode_texts(["a sksdog"])[0]
    legacy_pipeline.set_embeddings({"sksdog": embedding})
    assert legacy_pipeline.embeddings_used(["a sksdog"]) == ()
    np.testing.assert_array_equal(legacy_pipeline.prompt_encoder.encode_texts(["a sksdog"])[0], before)


# --- (c) SDXL: clip_l in CLIP-L, clip_g in bigG, the pooled vector ---------------------------------------------


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """A reduced-width SDXL (export/sdxl_demo.py) exported by our exporter, and its torch pipeline."""
    from engine.pipeline import Pipeline
    from export.onnx_export import export_pipeline
    from export.sdxl_demo import build_tiny_sdxl_pipeline

    torch.set_num_threads(1)
    pipe = build_tiny_sdxl_pipeline(seed=0)
    out = export_pipeline(pipe, tmp_path_factory.mktemp("sdxl") / "tiny-sdxl", name="tiny-sdxl")
    return Pipeline.from_path(out), pipe


@torch.no_grad()
def sdxl_reference(pipe, segments, clip_l: dict[str, np.ndarray], clip_g: dict[str, np.ndarray]) -> np.ndarray:
    """A1111's SDXL conditioning of one text, "No norm" emphasis, packed as the engine packs it: CLIP-L
    hidden_states[-2] ‖ bigG hidden_states[-2], then bigG's projected pooled output of the first chunk and the
    time ids (1024, 1024, 0, 0, 1024, 1024) on every token. Placeholders: clip_g's rows (A1111 `vectors`)."""
    tokenizer = pipe.tokenizer
    lookup = reference_lookup(tokenizer, {n: v.shape[0] for n, v in clip_g.items()})
    chunks = reference_chunks(tokenizer, segments, lookup)
    ids = torch.tensor([c[0] for c in chunks])
    ids_2 = ids.clone()
    for row in ids_2:  # open_clip pads with 0 after the first EOS
        row[int((row == tokenizer.eos_token_id).nonzero()[0]) + 1:] = 0
    fixes = [c[2] for c in chunks]
    mult = torch.tensor([c[1] for c in chunks])[:, :, None]
    hook = ReplacedRows(pipe.text_encoder.text_model.embeddings.token_embedding, fixes, clip_l)
    try:
        z_l = pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-2]
    finally:
        hook.handle.remove()
    hook = ReplacedRows(pipe.text_encoder_2.text_model.embeddings.token_embedding, fixes, clip_g)
    try:
        out_g = pipe.text_encoder_2(input_ids=ids_2, output_hidden_states=True)
    finally:
        hook.handle.remove()
    context = torch.cat([z_l * mult, out_g.hidden_states[-2] * mult], dim=-1).reshape(-1, 96)
    vector = torch.cat([out_g.text_embeds[0], torch.tensor([1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0])])
    return torch.cat([context, vector.expand(context.shape[0], -1)], dim=-1).numpy()


def test_sdxl_inserts_clip_l_and_clip_g_vectors_and_the_pooled_vector_follows(sdxl):
    pipeline, pipe = sdxl
    clip_l, clip_g = vectors(2, 32, seed=4), vectors(2, 64, seed=5)
    embedding = Embedding("sksdog", {"text_encoder": clip_l, "text_encoder_2": clip_g})
    assert pipeline.accepts_embedding(embedding)
    assert set(pipeline.manifest.text_token_tables) == {"text_encoder", "text_encoder_2"}
    pipeline.set_embeddings({"sksdog": embedding})
    prompt = "a (sksdog:1.2) on the grass"
    segments = [("a ", 1.0), ("sksdog", 1.2), (" on the grass", 1.0)]
    ours = pipeline.prompt_encoder.encode_texts([prompt], NO_NORM)[0]
    ref = sdxl_reference(pipe, segments, {"sksdog": clip_l}, {"sksdog": clip_g})
    assert ours.shape == ref.shape == (77, 96 + 48 + 6)
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    plain = sdxl_reference(pipe, segments, {}, {})
    # both encoders' rows and the pooled vector changed
    for part in (slice(0, 32), slice(32, 96), slice(96, 144)):
        assert np.abs(plain[:, part] - ref[:, part]).max() > 1e-3


def test_sdxl_placeholders_count_clip_g_rows(sdxl):
    pipeline, pipe = sdxl
    clip_l, clip_g = vectors(2, 32, seed=6), vectors(3, 64, seed=7)
    pipeline.set_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": clip_l, "text_encoder_2": clip_g})})
    words = " ".join(["cat"] * 73)
    prompt = f"{words} sksdog"
    ours = pipeline.prompt_encoder.encode_texts([prompt], NO_NORM)[0]
    ref = sdxl_reference(pipe, [(prompt, 1.0)], {"sksdog": clip_l}, {"sksdog": clip_g})
    assert ours.shape == (154, 150)
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)


def test_sdxl_accepts_only_both_widths(sdxl):
    pipeline, _ = sdxl
    assert not pipeline.accepts_embedding(Embedding("a", {"text_encoder": vectors(2, 32, seed=1)}))
    assert not pipeline.accepts_embedding(Embedding("a", {"text_encoder": vectors(2, 32, seed=1),
                                                          "text_encoder_2": vectors(2, 32, seed=1)}))
    assert pipeline.accepts_embedding(Embedding("a", {"text_encoder": vectors(2, 32, seed=1),
                                                      "text_encoder_2": vectors(2, 64, seed=1)}))


# --- (d) SD 2.x: OpenCLIP-H's layout, padded with 0 after EOS ----------------------------------------------------


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    """A reduced SD 2 (shipped sd2-base configs at width 32, tests/export/family_models.py) exported by our
    exporter, and its torch text encoder and tokenizer."""
    from engine.pipeline import Pipeline
    from export.detect import CONFIG_ROOT
    from export.onnx_export import export_diffusers_folder
    from tests.export.family_models import reduce_configs, save_sd2_folder

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sd2")
    configs = reduce_configs(CONFIG_ROOT / "sd2-base", root / "configs")
    folder = save_sd2_folder(configs, root / "folder", v_prediction=False, seed=7)
    pipeline = Pipeline.from_path(export_diffusers_folder(folder, root / "bundle"))
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    model = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    return pipeline, tokenizer, model


@torch.no_grad()
def test_sd2_inserts_rows_with_openclip_padding(sd2):
    pipeline, tokenizer, model = sd2
    assert pipeline.manifest.architecture == "sd2" and pipeline.manifest.pad_token_id == 0
    pipeline.set_embeddings({"sksdog": Embedding("sksdog", {"text_encoder": TWO})})
    prompt = "a (sksdog:1.3) in snow"
    segments = [("a ", 1.0), ("sksdog", 1.3), (" in snow", 1.0)]
    ours = encode(pipeline, prompt)
    chunks = reference_chunks(tokenizer, segments, reference_lookup(tokenizer, {"sksdog": 2}))
    ids = torch.tensor([c[0] for c in chunks])
    for row in ids:  # FrozenOpenCLIPEmbedder pads with 0 after the first EOS
        row[int((row == tokenizer.eos_token_id).nonzero()[0]) + 1:] = 0
    hook = ReplacedRows(model.text_model.embeddings.token_embedding, [c[2] for c in chunks], {"sksdog": TWO})
    try:
        z = model(input_ids=ids).last_hidden_state
    finally:
        hook.handle.remove()
    ref = (z * torch.tensor([c[1] for c in chunks])[:, :, None]).reshape(-1, WIDTH).numpy()
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
