"""Seamless tiling (engine/tiling.py): the circular-padding rewrite against NumPy's wrap padding and against
torch's `padding_mode="circular"` (what A1111's apply_circular sets), whole generations against diffusers with
circular Conv2d, images that wrap, and untiled jobs unchanged by tiled ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.images import decode_latents
from engine.pipeline import Pipeline
from engine.plan import GenerationPlan
from engine.tiling import EXTERNAL_DATA_FOLDER, TilingUnsupported, circular_padding

ROOT = Path(__file__).resolve().parents[2]
IMAGE_ATOL = 1e-4


# --- the rewrite on small graphs, against NumPy -------------------------------------------------------------


def conv_model(pads, opset=17, auto_pad=None, in_if=False, kernel=(3, 3), strides=(1, 1)):
    """x [1, 2, H, W] → Conv(w [3, 2, kh, kw], pads) → y, optionally inside an If's then-branch."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((3, 2, *kernel)).astype(np.float32)
    attrs = {"kernel_shape": list(kernel), "strides": list(strides)}
    if pads is not None:
        attrs["pads"] = list(pads)
    if auto_pad is not None:
        attrs["auto_pad"] = auto_pad
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, None, None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, None, None])
    init = [numpy_helper.from_array(weight, "w")]
    if in_if:
        branch = helper.make_graph([conv], "then", [], [y])
        other = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "else", [], [y])
        cond = numpy_helper.from_array(np.array(True), "cond")
        node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other)
        graph = helper.make_graph([node], "g", [x], [y], init + [cond])
    else:
        graph = helper.make_graph([conv], "g", [x], [y], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return model.SerializeToString(), weight


def numpy_conv(x, weight, stride=(1, 1)):
    """Unpadded cross-correlation, the reference Conv."""
    _, _, kh, kw = weight.shape
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride[0], ::stride[1]]
    return np.einsum("nchwij,ocij->nohw", windows, weight)


def run(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("pads,strides", [((1, 1, 1, 1), (1, 1)), ((1, 2, 0, 3), (1, 1)), ((1, 1, 1, 1), (2, 2)),
                                          ((2, 0, 2, 0), (1, 1))])
def test_padded_conv_becomes_wrap_padded_conv(pads, strides):
    model, weight = conv_model(pads, strides=strides)
    rewritten = circular_padding(model)
    assert rewritten.convolutions == 1
    x = np.random.default_rng(1).standard_normal((1, 2, 7, 9)).astype(np.float32)
    top, left, bottom, right = pads
    widths = ((0, 0), (0, 0), (top, bottom), (left, right))
    expected = numpy_conv(np.pad(x, widths, mode="wrap"), weight, strides)
    np.testing.assert_allclose(run(rewritten.model, x), expected, atol=1e-5)
    # The original still zero-pads (and so differs at the border): the rewrite is what wraps.
    zero = numpy_conv(np.pad(x, widths), weight, strides)
    np.testing.assert_allclose(run(model, x), zero, atol=1e-5)
    assert np.abs(expected - zero).max() > 0.1


def test_unpadded_and_valid_convs_are_left_alone():
    for pads, auto_pad in (((0, 0, 0, 0), None), (None, None), (None, "VALID")):
        model, _ = conv_model(pads, auto_pad=auto_pad)
        assert circular_padding(model).convolutions == 0


def test_conv_inside_a_subgraph_is_rewritten():
    model, weight = conv_model((1, 1, 1, 1), in_if=True)
    rewritten = circular_padding(model)
    assert rewritten.convolutions == 1
    x = np.random.default_rng(2).standard_normal((1, 2, 5, 6)).astype(np.float32)
    expected = numpy_conv(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="wrap"), weight)
    np.testing.assert_allclose(run(rewritten.model, x), expected, atol=1e-5)


def test_graphs_it_cannot_rewrite_are_refused():
    with pytest.raises(TilingUnsupported, match="auto_pad=SAME_UPPER"):
        circular_padding(conv_model(None, auto_pad="SAME_UPPER")[0])
    with pytest.raises(TilingUnsupported, match="opset 9"):
        circular_padding(conv_model((1, 1, 1, 1), opset=9)[0])


def test_the_graph_keeps_its_opset_and_every_other_field():
    import onnx

    model, _ = conv_model((1, 1, 1, 1))
    before, after = onnx.load_from_string(model), onnx.load_from_string(circular_padding(model).model)
    assert [(o.domain, o.version) for o in after.opset_import] == [("", 17)]
    assert (after.ir_version, after.producer_name, after.graph.input, after.graph.output) == (
        before.ir_version, before.producer_name, before.graph.input, before.graph.output)
    assert [n.op_type for n in after.graph.node] == ["Slice", "Slice", "Concat", "Slice", "Slice", "Concat", "Conv"]
    onnx.checker.check_model(after, full_check=True)


# --- the bundle's graphs, against torch's circular padding ---------------------------------------------------


@contextmanager
def circular_convs(*modules):
    """A1111's `apply_circular(True)`: padding_mode='circular' on every Conv2d; restored afterwards (the torch
    reference pipeline is shared by the session)."""
    import torch

    convs = [m for module in modules for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    modes = [c.padding_mode for c in convs]
    for c in convs:
        c.padding_mode = "circular"
    try:
        yield
    finally:
        for c, mode in zip(convs, modes, strict=True):
            c.padding_mode = mode


def padded_conv2d(module) -> int:
    import torch

    return sum(1 for m in module.modules() if isinstance(m, torch.nn.Conv2d) and any(m.padding))


def test_every_padded_conv2d_of_the_model_is_wrapped(demo_bundle, torch_pipeline):
    vae = torch_pipeline.vae
    expected = {"unet": padded_conv2d(torch_pipeline.unet), "vae_decoder": padded_conv2d(vae.decoder),
                "vae_encoder": padded_conv2d(vae.encoder)}
    got = {c: circular_padding((demo_bundle / c / "model.onnx").read_bytes()).convolutions for c in expected}
    assert got == expected
    assert min(got.values()) > 5


def test_components_equal_torch_with_circular_padding(demo_pipeline, torch_pipeline):
    import torch

    backend = demo_pipeline.tiled().backend
    rng = np.random.default_rng(3)
    unet, vae = torch_pipeline.unet, torch_pipeline.vae
    x = rng.standard_normal((2, 4, 8, 16)).astype(np.float32)
    t = np.array([600.0, 600.0], np.float32)
    context = rng.standard_normal((2, 77, unet.config.cross_attention_dim)).astype(np.float32)
    latent = rng.standard_normal((1, 4, 8, 16)).astype(np.float32)
    image = rng.uniform(-1, 1, (1, 3, 64, 128)).astype(np.float32)
    with torch.no_grad(), circular_convs(unet, vae):
        ref_eps = unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(context)).sample.numpy()
        ref_image = vae.decode(torch.from_numpy(latent)).sample.numpy()
        moments = vae.encoder(torch.from_numpy(image))
        ref_moments = (vae.quant_conv(moments) if vae.quant_conv is not None else moments).numpy()
    eps = backend.run("unet", {"sample": x, "timestep": t, "encoder_hidden_states": context})["out_sample"]
    decoded = backend.run("vae_decoder", {"latent_sample": latent})["sample"]
    encoded = next(iter(backend.run("vae_encoder", {"sample": image}).values()))
    for ours, ref in ((eps, ref_eps), (decoded, ref_image), (encoded, ref_moments)):
        assert np.abs(ours - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    # The plain sessions still zero-pad: they differ from the circular reference.
    plain = demo_pipeline.backend.run("vae_decoder", {"latent_sample": latent})["sample"]
    assert np.abs(plain - ref_image).max() > 1e-3


def make_plan(prompts, width, height, steps=8, tiling=True, sampler="Euler") -> GenerationPlan:
    n = len(prompts)
    return GenerationPlan(
        prompts=tuple(prompts), negative_prompts=("",) * n, seeds=tuple(range(1, n + 1)),
        subseeds=tuple(range(1, n + 1)), width=width, height=height, steps=steps, cfg_scale=7.0,
        sampler=sampler, scheduler="automatic", batch_size=n, tiling=tiling,
    )


@pytest.mark.slow
def test_tiled_txt2img_equals_diffusers_with_circular_convs(demo_pipeline, torch_pipeline):
    import torch

    from engine.schedules import get_sigmas_uniform
    from tests.engine.test_reference_diffusers import STEPS, euler_reference

    width, height = 64, 96
    plan = make_plan(["a red circle"], width, height, steps=STEPS)
    noise = np.random.default_rng(4).standard_normal((1, *demo_pipeline.latent_shape(width, height)))
    noise = noise.astype(np.float32)
    result = demo_pipeline.txt2img(plan, initial_noise=noise)
    images = decode_latents(demo_pipeline.tiled().backend, demo_pipeline.manifest, np.stack(result.latents))
    reference = euler_reference(torch_pipeline)
    sigmas = [float(s) for s in get_sigmas_uniform(demo_pipeline.schedule, STEPS)]
    with torch.no_grad(), circular_convs(reference.unet, reference.vae):
        ref = reference(prompt=["a red circle"], negative_prompt=[""], width=width, height=height,
                        guidance_scale=7.0, sigmas=sigmas, latents=torch.from_numpy(noise), output_type="np").images
    ref = np.moveaxis(ref, -1, 1)
    assert np.abs(images - ref).max() <= IMAGE_ATOL
    assert ref.std() > 0.05
    # Not equal to the zero-padded generation: tiling changed the image.
    plain = demo_pipeline.txt2img(make_plan(["a red circle"], width, height, STEPS, tiling=False),
                                  initial_noise=noise)
    plain_images = decode_latents(demo_pipeline.backend, demo_pipeline.manifest, np.stack(plain.latents))
    assert np.abs(plain_images - ref).max() > 0.05


def test_untiled_jobs_are_unchanged_by_tiled_ones(demo_pipeline):
    pipeline = demo_pipeline
    plain = make_plan(["a red circle", "a blue square"], 64, 64, steps=4, tiling=False, sampler="Euler a")
    before = [im.tobytes() for im in pipeline.txt2img(plain).images]
    tiled = [im.tobytes() for im in pipeline.txt2img(make_plan(["a red circle", "a blue square"], 64, 64, 4,
                                                                 sampler="Euler a")).images]
    after = [im.tobytes() for im in pipeline.txt2img(plain).images]
    assert after == before
    assert tiled != before
    assert pipeline.tiled() is pipeline.tiled()  # the tiled sessions are kept


# --- the trained shapes model: the images wrap ----------------------------------------------------------------


def seam_roughness(image) -> dict[str, tuple[float, float, float]]:
    """Per axis: (mean |Δ| across the wrap seam (last ↔ first column/row), mean and 90th percentile of |Δ|
    between interior neighbouring columns/rows)."""
    a = np.asarray(image).astype(np.float64)
    out = {}
    for name, axis in (("columns", 1), ("rows", 0)):
        b = np.moveaxis(a, axis, 0)
        interior = np.abs(np.diff(b, axis=0)).mean(axis=(1, 2))
        out[name] = (float(np.abs(b[-1] - b[0]).mean()), float(interior.mean()), float(np.percentile(interior, 90)))
    return out


@pytest.fixture(scope="module")
def shapes_pipeline(shapes_bundle):
    return Pipeline.from_path(shapes_bundle, "cpu")


@pytest.mark.slow
def test_tiled_shapes_images_wrap(shapes_pipeline):
    """Over 12 images the seam between the right and left edges (bottom and top) is no rougher than interior
    neighbouring columns (rows): its mean |Δ| stays under the interior pairs' 90th percentile. The same
    measure sees the seam of untiled images, so it can fail."""
    prompts = ["a red circle", "a blue square on the left", "a green triangle at the top",
               "a yellow circle and a red square"]
    stats = {}
    for tiling in (True, False):
        rows = []
        for seed in (1, 2, 3):
            plan = make_plan(prompts, 64, 64, steps=20, tiling=tiling, sampler="Euler a")
            plan = replace(plan, seeds=(seed,) * 4, subseeds=(seed,) * 4)
            rows += [seam_roughness(im) for im in shapes_pipeline.txt2img(plan).images]
        stats[tiling] = {axis: np.mean([r[axis] for r in rows], axis=0) for axis in ("columns", "rows")}
    for axis in ("columns", "rows"):
        seam, mean, p90 = stats[True][axis]
        assert seam <= p90, (axis, stats)
        plain_seam, plain_mean, plain_p90 = stats[False][axis]
        assert plain_seam > plain_p90 and plain_seam > 1.5 * seam * plain_mean / mean, (axis, stats)


@pytest.mark.slow
def test_tiled_image_is_a_function_on_the_torus(shapes_pipeline):
    """With every convolution circular, the pipeline commutes with circular shifts of the latent by the UNet's
    coarsest stride (4 latent pixels here: two stride-2 downsamplers): rolling the initial noise rolls the image
    by 32 px. Zero padding breaks this, so it is a direct check that nothing pads with zeros any more."""
    plan = make_plan(["a red circle"], 64, 64, steps=10, sampler="Euler")
    noise = np.random.default_rng(5).standard_normal((1, 4, 8, 8)).astype(np.float32)
    rolled_noise = np.roll(noise, (4, 4), axis=(2, 3))
    tiled = shapes_pipeline.tiled()

    def image(p, x):
        latents = np.stack(shapes_pipeline.txt2img(p, initial_noise=x).latents)
        return decode_latents((tiled if p.tiling else shapes_pipeline).backend, shapes_pipeline.manifest, latents)

    a, b = image(plan, noise), image(plan, rolled_noise)
    assert np.abs(np.roll(a, (32, 32), axis=(2, 3)) - b).max() < 1e-3
    plain = replace(plan, tiling=False)
    c, d = image(plain, noise), image(plain, rolled_noise)
    assert np.abs(np.roll(c, (32, 32), axis=(2, 3)) - d).max() > 0.1


# --- no onnx at run time --------------------------------------------------------------------------------------

SCRIPT = r"""
import importlib.abc, json, sys

class BlockOnnx(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("onnx", "torch", "export", "service"):
            raise ImportError(name)

sys.meta_path.insert(0, BlockOnnx())
from engine.pipeline import Pipeline
from engine.plan import GenerationPlan

pipeline = Pipeline.from_path(sys.argv[1], "cpu")
plan = GenerationPlan(prompts=("a red circle",), negative_prompts=("",), seeds=(1,), subseeds=(1,), width=64,
                      height=64, steps=2, cfg_scale=7.0, sampler="Euler", scheduler="automatic", tiling=True)
image = pipeline.txt2img(plan).images[0]
print(json.dumps({"size": list(image.size), "onnx": "onnx" in sys.modules}))
"""


@pytest.mark.slow
def test_tiling_runs_without_onnx(demo_bundle):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(demo_bundle)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"size": [64, 64], "onnx": False}


def test_the_rewritten_graph_loads_its_weights_from_the_bundle(demo_bundle, tmp_path):
    """No weight is copied: the variant is loaded from memory with the component folder as its data folder."""
    import onnxruntime as ort

    path = demo_bundle / "unet" / "model.onnx"
    model = circular_padding(path.read_bytes()).model
    assert len(model) < path.stat().st_size + 64 * 1024  # the graph only, a few new nodes
    options = ort.SessionOptions()
    options.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(path.parent))
    ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    # Without it ORT cannot find model.onnx_data: the weights are external.
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.Fail, match="onnx_data"):
        ort.InferenceSession(model, providers=["CPUExecutionProvider"])


# --- large images: the VAE runs whole -------------------------------------------------------------------------


class RecordingVae:
    """A stand-in VAE (nearest-neighbour ×8 decode, mean-pool encode) that records the spatial size of each call."""

    def __init__(self, circular: bool):
        self.circular = circular
        self.calls: list[tuple[int, int]] = []

    def run(self, component, inputs):
        x = next(iter(inputs.values()))
        self.calls.append(x.shape[2:])
        if component == "vae_decoder":
            return {"sample": np.repeat(np.repeat(x[:, :3], 8, axis=2), 8, axis=3)}
        pooled = x.reshape(*x.shape[:2], x.shape[2] // 8, 8, x.shape[3] // 8, 8).mean(axis=(3, 5))
        return {"latent_parameters": np.concatenate([pooled, pooled[:, :1], pooled, pooled[:, :1]], axis=1)}


def test_a_wrapping_vae_is_never_run_in_tiles():
    """Blended VAE tiles (engine/images.py, above 1024×1024 px) would each wrap within themselves: with circular
    padding the VAE sees the whole image, as in A1111."""
    from engine.images import DEFAULT_TILING, vae_posterior

    manifest = type("M", (), {"vae_scale_factor": 8, "vae_scaling_factor": 1.0})()
    size = DEFAULT_TILING.tile + 8  # latent pixels: above the tiling threshold
    latents = np.zeros((1, 4, size, size), np.float32)
    for circular, whole in ((False, False), (True, True)):
        vae = RecordingVae(circular)
        decode_latents(vae, manifest, latents)
        vae_posterior(vae, np.zeros((1, 3, size * 8, size * 8), np.float32))
        assert (vae.calls == [(size, size), (size * 8, size * 8)]) is whole, vae.calls


@pytest.mark.slow
def test_optimum_bundles_tile_too(demo_pipeline, optimum_bundle):
    """optimum-cli's graphs (opset 18, weights inline) get the same rewrite: same weights, same tiled image."""
    optimum = Pipeline.from_path(optimum_bundle, "cpu")
    plan = make_plan(["a red circle"], 64, 64, steps=4)
    noise = np.random.default_rng(6).standard_normal((1, 4, 8, 8)).astype(np.float32)
    ours = np.asarray(demo_pipeline.txt2img(plan, initial_noise=noise).images[0]).astype(int)
    theirs = np.asarray(optimum.txt2img(plan, initial_noise=noise).images[0]).astype(int)
    plain = np.asarray(optimum.txt2img(replace(plan, tiling=False), initial_noise=noise).images[0]).astype(int)
    assert np.abs(ours - theirs).max() <= 1
    assert np.abs(plain - theirs).max() > 10
