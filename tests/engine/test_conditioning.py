"""Prompts → conditioning against an independent torch reference of A1111's algorithm (A1111
modules/sd_hijack_clip.py: FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line,
process_tokens),
and the conditioning the UNet really receives step by step through the pipeline."""

from pathlib import Path

import numpy as np
import pytest

from engine.conditioning import TextEncoderOptions, scheduled_conditioning
from engine.plan import GenerationPlan

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BREAK = "BREAK"
PHRASE = "one two three four five six seven eight nine ten eleven twelve, "  # 12 words + comma = 13 tokens


@pytest.fixture(scope="module")
def reference(demo_diffusers_dir: Path):
    """transformers' CLIPTokenizer + CLIPTextModel on the demo weights, driven by A1111's chunking written here."""
    torch.set_num_threads(1)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(demo_diffusers_dir / "tokenizer")
    model = transformers.CLIPTextModel.from_pretrained(demo_diffusers_dir / "text_encoder").eval()
    return tokenizer, model


class OnnxTextEncoder:
    """The ExecutionBackend calls PromptEncoder makes, on one ONNX text encoder."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(self, component, inputs):
        names = self.output_names(component)
        return dict(zip(names, self.session.run(names, inputs), strict=True))

    def input_specs(self, component):
        from engine.backend import TensorSpec

        return [TensorSpec(i.name, tuple(i.shape), "int64") for i in self.session.get_inputs()]

    def output_names(self, component):
        return [o.name for o in self.session.get_outputs()]


@pytest.fixture(scope="module")
def shifted(demo_bundle: Path, reference, tmp_path_factory):
    """The demo text encoder with a non-zero final LayerNorm bias, exported by our exporter, and its torch twin.

    Randomly initialised, the demo's final LayerNorm has bias 0, so every output token has mean 0 and "Original"
    emphasis would divide ~0 by ~0; trained CLIP weights are not like that. The shift makes the mean meaningful.
    """
    from engine.bundle import load_bundle
    from engine.conditioning import PromptEncoder
    from engine.tokenizer import ClipTokenizer
    from export.onnx_export import _axes, _export, _wrappers

    tokenizer, model = reference
    model = transformers.CLIPTextModel.from_pretrained(model.name_or_path).eval()
    with torch.no_grad():
        model.text_model.final_layer_norm.bias.copy_(torch.linspace(-0.2, 0.6, model.config.hidden_size))
    path = tmp_path_factory.mktemp("shifted") / "text_encoder.onnx"
    ids = torch.full((2, 77), tokenizer.eos_token_id, dtype=torch.int64)
    ids[:, 0] = tokenizer.bos_token_id
    _export(_wrappers()[0](model), (ids,), path, {"input_ids": _axes(batch=0, sequence=1)},
            {"last_hidden_state": _axes(batch=0, sequence=1), "pooler_output": _axes(batch=0),
             "normed_hidden_states": _axes(batch=0, sequence=2)})
    bundle = load_bundle(demo_bundle)
    encoder = PromptEncoder(OnnxTextEncoder(path), ClipTokenizer(bundle.tokenizer_dir), bundle.manifest)
    return encoder, (tokenizer, model)


def reference_chunks(tokenizer, segments, backtrack=20):
    """A1111's tokenize_line over pre-parsed (text, weight) segments; BREAK closes a chunk."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks, cur_t, cur_w, comma_at = [], [], [], -1

    def close():
        nonlocal cur_t, cur_w, comma_at
        n = 75 - len(cur_t)
        chunks.append(([bos] + cur_t + [eos] * n + [eos], [1.0] + cur_w + [1.0] * n + [1.0]))
        cur_t, cur_w, comma_at = [], [], -1

    for seg in segments:
        if seg == BREAK:
            close()
            continue
        text, weight = seg
        for tok in tokenizer(text, add_special_tokens=False)["input_ids"]:
            if tok == comma:
                comma_at = len(cur_t)
            elif backtrack and len(cur_t) == 75 and comma_at != -1 and 75 - comma_at <= backtrack:
                keep = comma_at + 1
                rest_t, rest_w = cur_t[keep:], cur_w[keep:]
                cur_t, cur_w = cur_t[:keep], cur_w[:keep]
                close()
                cur_t, cur_w = rest_t, rest_w
            if len(cur_t) == 75:
                close()
            cur_t.append(tok)
            cur_w.append(weight)
    if cur_t or not chunks:
        close()
    return chunks


@torch.no_grad()
def reference_encode(reference, batch_segments, clip_skip=1, emphasis="Original", backtrack=20):
    """Texts encoded together (A1111 modules/sd_hijack_clip.py:
    FrozenCLIPEmbedderWithCustomWordsBase.process_tokens): per chunk index, encode, weight, restore the batch
    mean; concatenate."""
    tokenizer, model = reference
    per_text = [reference_chunks(tokenizer, segs, backtrack) for segs in batch_segments]
    count = max(len(c) for c in per_text)
    empty = ([tokenizer.bos_token_id] + [tokenizer.eos_token_id] * 76, [1.0] * 77)
    outs = []
    for j in range(count):
        rows = [c[j] if j < len(c) else empty for c in per_text]
        ids = torch.tensor([r[0] for r in rows])
        mult = torch.tensor([r[1] for r in rows])
        out = model(input_ids=ids, output_hidden_states=True)
        if clip_skip > 1:
            z = model.text_model.final_layer_norm(out.hidden_states[-clip_skip])
        else:
            z = out.last_hidden_state
        # unweighted, A1111 divides the mean of a tensor by itself (1, or 0/0 on the demo's zero-mean outputs)
        if emphasis in ("Original", "No norm") and not bool((mult == 1).all()):
            before = z.mean()
            z = z * mult[:, :, None]
            if emphasis == "Original":
                z = z * (before / z.mean())
        outs.append(z)
    return torch.cat(outs, dim=1).numpy()


def encode(encoder, texts, **options):
    return np.stack(encoder.encode_texts(texts, TextEncoderOptions(**options)))


EMPHASIS_PROMPT = "a (red:1.5) cat, [blue] sky, ((tall)) tree"
EMPHASIS_SEGMENTS = [("a ", 1.0), ("red", 1.5), (" cat, ", 1.0), ("blue", 1 / 1.1), (" sky, ", 1.0),
                     ("tall", 1.1 * 1.1), (" tree", 1.0)]


@pytest.mark.parametrize("emphasis", ["Original", "No norm", "Ignore"])
@pytest.mark.slow
def test_emphasis_matches_reference(shifted, emphasis):
    encoder, reference = shifted
    ours = encode(encoder, [EMPHASIS_PROMPT], emphasis=emphasis)
    ref = reference_encode(reference, [EMPHASIS_SEGMENTS], emphasis=emphasis)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    assert ours.shape == (1, 77, 32)


def test_emphasis_none_keeps_brackets_as_text(demo_pipeline, reference):
    ours = encode(demo_pipeline.prompt_encoder, [EMPHASIS_PROMPT + " BREAK x"], emphasis="None")
    ref = reference_encode(reference, [[(EMPHASIS_PROMPT + " BREAK x", 1.0)]], emphasis="None")
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_emphasis_mean_is_restored_over_the_whole_batch(shifted):
    # the texts of one prompt's schedule are encoded together; the shorter one gets an empty second chunk
    encoder, reference = shifted
    texts = ["a (cat:1.4)", "a (dog:0.6), " + PHRASE * 6]
    ours = encode(encoder, texts)
    ref = reference_encode(reference, [[("a ", 1.0), ("cat", 1.4)], [("a ", 1.0), ("dog", 0.6), (", " + PHRASE * 6, 1.0)]])
    assert ours.shape == (2, 154, 32)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    alone = encode(encoder, texts[:1])
    assert np.abs(alone[0] - ours[0, :77]).max() > 1e-4  # the batch changed the normalisation


@pytest.mark.parametrize("backtrack", [20, 0])
def test_long_prompt_chunks_with_comma_backtracking(demo_pipeline, reference, backtrack):
    prompt = PHRASE * 7  # 91 tokens: commas at 12, 25, … 64 → with backtracking the first chunk ends after 64
    ours = encode(demo_pipeline.prompt_encoder, [prompt], comma_padding_backtrack=backtrack)
    ref = reference_encode(reference, [[(prompt, 1.0)]], backtrack=backtrack)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    chunks = demo_pipeline.prompt_encoder.tokenize_line(prompt, TextEncoderOptions(comma_padding_backtrack=backtrack))
    first = chunks[0].tokens
    assert len(chunks) == 2 and len(first) == 77
    eos = demo_pipeline.manifest.eos_token_id
    assert (first[66] == eos) == (backtrack == 20)  # padded after the comma at 64 (+1 for BOS)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_clip_skip_matches_reference(shifted, clip_skip):
    encoder, reference = shifted
    prompt = "a (photo:1.2) of a cat BREAK " + PHRASE * 3
    ours = encode(encoder, [prompt], clip_skip=clip_skip)
    segments = [("a ", 1.0), ("photo", 1.2), (" of a cat", 1.0), BREAK, (PHRASE * 3, 1.0)]
    ref = reference_encode(reference, [segments], clip_skip=clip_skip)
    assert ours.shape == (1, 154, 32)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_empty_prompt_and_break_chunks(demo_pipeline, reference):
    ours = encode(demo_pipeline.prompt_encoder, ["", "a BREAK BREAK b"])
    ref = reference_encode(reference, [[("", 1.0)], [("a", 1.0), BREAK, ("", 1.0), BREAK, ("b", 1.0)]])
    assert ours.shape == (2, 231, 32)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_identical_prompts_are_encoded_once(demo_pipeline):
    calls = []
    encoder = demo_pipeline.prompt_encoder
    original = encoder.encode_chunks

    def counting(chunks, clip_skip=1):
        calls.append(len(chunks))
        return original(chunks, clip_skip)

    encoder.encode_chunks = counting
    try:
        cond = scheduled_conditioning(encoder, ["same prompt x1"] * 3, ["same prompt x1"] * 3, 10)
    finally:
        del encoder.encode_chunks
    assert calls == [1]  # positive and negative texts are the same: one row, once (then cached)
    assert cond.cond[0][0][0] is cond.cond[2][0][0]


# Through the pipeline: record what the UNet receives at every call.


class RecordingUNet:
    def __init__(self, unet):
        self.unet = unet
        self.contexts = []

    def __getattr__(self, name):
        return getattr(self.unet, name)

    def __call__(self, sample, t, context, image_cond=None):
        self.contexts.append(np.array(context))
        return self.unet(sample, t, context, image_cond)


def run(pipeline, monkeypatch, prompt, negative="", steps=4, sampler="Euler", cfg_scale=7.0):
    recorder = RecordingUNet(pipeline.unet)
    monkeypatch.setattr(pipeline, "unet", recorder)
    plan = GenerationPlan(
        prompts=(prompt,), negative_prompts=(negative,), seeds=(1,), subseeds=(1,), width=64, height=64,
        steps=steps, cfg_scale=cfg_scale, sampler=sampler, scheduler="automatic",
    )
    pipeline.txt2img(plan)
    return recorder.contexts


def test_prompt_editing_switches_at_the_expected_step(demo_pipeline, reference, monkeypatch):
    contexts = run(demo_pipeline, monkeypatch, "a [cat:dog:0.5]")
    cat, dog = reference_encode(reference, [[("a cat", 1.0)], [("a dog", 1.0)]])
    empty = reference_encode(reference, [[("", 1.0)]])[0]
    assert len(contexts) == 4 and all(c.shape == (2, 77, 32) for c in contexts)  # cond and uncond batched
    # when = int(0.5 · 4) = 2; the counter c uses the first text while c <= 2
    for call, expected in zip(contexts, [cat, cat, cat, dog], strict=True):
        np.testing.assert_allclose(call[0], expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(call[1], empty, atol=1e-5, rtol=0)


def test_second_order_samplers_schedule_over_twice_the_steps(demo_pipeline, reference, monkeypatch):
    contexts = run(demo_pipeline, monkeypatch, "a [cat:dog:0.5]", sampler="Heun")
    cat, dog = reference_encode(reference, [[("a cat", 1.0)], [("a dog", 1.0)]])
    assert len(contexts) == 7  # Heun: 2·4 − 1 model calls; schedules span 8 steps, when = 4
    for call, expected in zip(contexts, [cat] * 5 + [dog] * 2, strict=True):
        np.testing.assert_allclose(call[0], expected, atol=1e-5, rtol=0)


def test_long_prompt_runs_cond_and_uncond_separately(demo_pipeline, reference, monkeypatch):
    prompt = PHRASE * 15  # 195 tokens → 3 chunks
    contexts = run(demo_pipeline, monkeypatch, prompt, steps=2)
    ref = reference_encode(reference, [[(prompt, 1.0)]])[0]
    empty = reference_encode(reference, [[("", 1.0)]])[0]
    assert [c.shape for c in contexts] == [(1, 231, 32), (1, 77, 32)] * 2
    for cond, uncond in zip(contexts[::2], contexts[1::2], strict=True):
        np.testing.assert_allclose(cond[0], ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(uncond[0], empty, atol=1e-5, rtol=0)


def test_break_and_and_through_the_pipeline(demo_pipeline, reference, monkeypatch):
    contexts = run(demo_pipeline, monkeypatch, "a cat BREAK red AND a dog <lora:x:0.7>:0.5", negative="ugly",
                   steps=2)
    first = reference_encode(reference, [[("a cat", 1.0), BREAK, ("red", 1.0)]])[0]
    second = reference_encode(reference, [[(" a dog ", 1.0)]])[0]
    ugly = reference_encode(reference, [[("ugly", 1.0)]])[0]
    # cond rows [154 tokens, 77 padded to 154 by repeating the last vector], then the uncond alone (77)
    assert [c.shape for c in contexts] == [(2, 154, 32), (1, 77, 32)] * 2
    np.testing.assert_allclose(contexts[0][0], first, atol=1e-5, rtol=0)
    padded = np.concatenate([second, np.repeat(second[-1:], 77, axis=0)])
    np.testing.assert_allclose(contexts[0][1], padded, atol=1e-5, rtol=0)
    np.testing.assert_allclose(contexts[1][0], ugly, atol=1e-5, rtol=0)


def test_img2img_schedules_over_the_full_step_count(demo_pipeline, reference, monkeypatch):
    from PIL import Image

    from engine.plan import Img2ImgPlan

    recorder = RecordingUNet(demo_pipeline.unet)
    monkeypatch.setattr(demo_pipeline, "unet", recorder)
    # steps 4, strength 0.5: the sampler walks t_enc + 1 = 3 steps; "[cat:dog:1]" still counts over all 4
    # (A1111 modules/sd_samplers_common.py: setup_img2img_steps)
    plan = GenerationPlan(
        prompts=("a [cat:dog:1]",), negative_prompts=("",), seeds=(1,), subseeds=(1,), width=64, height=64,
        steps=4, cfg_scale=7.0, sampler="Euler", scheduler="automatic",
        img2img=Img2ImgPlan((Image.new("RGB", (64, 64), (200, 30, 30)),), 0.5),
    )
    demo_pipeline.img2img(plan)
    cat, dog = reference_encode(reference, [[("a cat", 1.0)], [("a dog", 1.0)]])
    assert len(recorder.contexts) == 3
    for call, expected in zip(recorder.contexts, [cat, cat, dog], strict=True):
        np.testing.assert_allclose(call[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("old_rules", [False, True])
def test_hires_pass_schedules(demo_pipeline, reference, monkeypatch, old_rules):
    from dataclasses import replace

    from engine.plan import HiresPlan

    recorder = RecordingUNet(demo_pipeline.unet)
    monkeypatch.setattr(demo_pipeline, "unet", recorder)
    prompt = "a [cat:dog:6]"  # integer steps count on from the first pass's 4 (new rules)
    hires = HiresPlan(
        width=64, height=64, upscaler="Latent", sampler="Euler", scheduler="automatic", steps=4,
        denoising_strength=0.5, prompts=(prompt,), negative_prompts=("",),
    )
    plan = GenerationPlan(
        prompts=(prompt,), negative_prompts=("",), seeds=(1,), subseeds=(1,), width=64, height=64, steps=4,
        cfg_scale=7.0, sampler="Euler", scheduler="automatic", hires=hires,
    )
    demo_pipeline.txt2img(replace(plan, use_old_scheduling=old_rules))
    cat, dog = reference_encode(reference, [[("a cat", 1.0)], [("a dog", 1.0)]])
    assert len(recorder.contexts) == 8
    # first pass: when = min(4, 6) → cat throughout; hires, new rules: when = 6 − 4 = 2 → dog from call 3;
    # old rules: the hires pass reuses the first pass's schedule → cat throughout
    expected = [cat] * 4 + ([cat] * 4 if old_rules else [cat] * 3 + [dog])
    for call, want in zip(recorder.contexts, expected, strict=True):
        np.testing.assert_allclose(call[0], want, atol=1e-5, rtol=0)
