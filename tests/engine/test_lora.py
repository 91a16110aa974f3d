"""LoRA files merged into the bundle's weights give what diffusers gives with the same file loaded through
`load_lora_weights` (kohya keys converted by diffusers, applied by PEFT): the independent reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.lora import LoraMap, NetworkUse, load_network, merged_weights
from engine.network_sessions import ModelNetworks
from engine.safetensors_file import write_file
from tests.engine.test_reference_diffusers import STEPS, euler_reference, make_plan
from tests.ldm_names import diffusers_to_ldm

UNET_LINEAR = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0",
    "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.2",
    "mid_block.attentions.0.transformer_blocks.0.attn1.to_v",
]
UNET_CONV = ["down_blocks.1.attentions.0.proj_in", "up_blocks.0.attentions.0.proj_out"]
UNET_CONV3 = ["down_blocks.0.resnets.0.conv1", "up_blocks.1.resnets.2.conv2"]
TE_LINEAR = ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.1.mlp.fc1",
             "text_model.encoder.layers.1.self_attn.out_proj"]


def _module(root, path: str):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def kohya_lora(torch_pipe, seed: int, unet: bool = True, te: bool = True, rank: int = 4,
               alpha: float = 2.0, scale: float = 0.2) -> dict[str, np.ndarray]:
    """A kohya-format LoRA (LoCon for the 3×3 convs) for the demo model's modules, random factors (each module's
    drawn from its own generator, so a file with fewer modules holds the same factors for those it has)."""
    tensors: dict[str, np.ndarray] = {}

    def add(prefix: str, path: str) -> None:
        rng = np.random.default_rng([seed, *path.encode()])
        weight = _module(getattr(torch_pipe, "unet" if prefix == "lora_unet_" else "text_encoder"), path).weight
        out_ch, in_ch = weight.shape[:2]
        kernel = tuple(weight.shape[2:])
        key = prefix + path.replace(".", "_")
        down = rng.standard_normal((rank, in_ch, *kernel)).astype(np.float32) * scale
        up = rng.standard_normal((out_ch, rank, *((1, 1) if kernel else ()))).astype(np.float32) * scale
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = np.asarray(alpha, dtype=np.float32)

    if unet:
        for path in UNET_LINEAR + UNET_CONV + UNET_CONV3:
            add("lora_unet_", path)
    if te:
        for path in TE_LINEAR:
            add("lora_te_", path)
    return tensors


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, torch_pipeline) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    write_file(folder / "both.safetensors", kohya_lora(torch_pipeline, 1))
    write_file(folder / "unet_only.safetensors", kohya_lora(torch_pipeline, 1, te=False))
    write_file(folder / "te_only.safetensors", kohya_lora(torch_pipeline, 1, unet=False))
    write_file(folder / "other.safetensors", kohya_lora(torch_pipeline, 2))
    return folder


@pytest.fixture(scope="module")
def networks(demo_pipeline) -> ModelNetworks:
    return ModelNetworks(demo_pipeline)


def reference_pipeline(demo_diffusers_dir, lora_dir, files: list[str], weights: list[float] | None = None):
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        demo_diffusers_dir, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    names = []
    for i, file in enumerate(files):
        pipe.load_lora_weights(str(lora_dir), weight_name=file, adapter_name=f"n{i}")
        names.append(f"n{i}")
    if names:
        pipe.set_adapters(names, weights or [1.0] * len(names))
    return euler_reference(pipe)


def run_engine(pipeline, prompt: str = "a red circle", seed: int = 0):
    plan = make_plan(pipeline, [prompt], ["blurry"], 64, 64)
    shape = (1, *pipeline.latent_shape(64, 64))
    noise = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.asarray(pipeline.txt2img(plan, initial_noise=noise).images[0]), noise


def run_reference(reference, pipeline, noise, prompt: str = "a red circle"):
    import torch

    from engine.schedules import get_sigmas_uniform

    sigmas = [float(s) for s in get_sigmas_uniform(pipeline.schedule, STEPS)]
    with torch.no_grad():
        image = reference(prompt=[prompt], negative_prompt=["blurry"], width=64, height=64, guidance_scale=7.0,
                          sigmas=sigmas, latents=torch.from_numpy(noise), output_type="np").images[0]
    return image


def test_every_target_module_is_in_the_map(demo_bundle, torch_pipeline):
    lora_map = LoraMap.load(demo_bundle)
    assert lora_map is not None
    for path in UNET_LINEAR + UNET_CONV + UNET_CONV3:
        target = lora_map.targets["lora_unet_" + path.replace(".", "_")]
        base = _module(torch_pipeline.unet, path).weight.detach().numpy()
        np.testing.assert_array_equal(target.read(demo_bundle), base)
    for path in TE_LINEAR:
        target = lora_map.targets["lora_te_" + path.replace(".", "_")]
        np.testing.assert_array_equal(target.read(demo_bundle),
                                      _module(torch_pipeline.text_encoder, path).weight.detach().numpy())


def test_merged_weights_equal_diffusers_fused_weights(demo_bundle, demo_diffusers_dir, lora_dir):
    """Per module: base + ΔW equals the weight diffusers/PEFT fuse from the same kohya file."""
    reference = reference_pipeline(demo_diffusers_dir, lora_dir, ["both.safetensors"])
    reference.fuse_lora(lora_scale=0.7)
    reference.unload_lora_weights()
    lora_map = LoraMap.load(demo_bundle)
    network = load_network(lora_dir / "both.safetensors")
    merged, reports = merged_weights(demo_bundle, lora_map, [(network, NetworkUse("both", 0.7, 0.7))])
    assert reports["both"].applied_modules == len(UNET_LINEAR + UNET_CONV + UNET_CONV3 + TE_LINEAR)
    assert reports["both"].unmatched_modules == ()
    for component, paths, prefix in (("unet", UNET_LINEAR + UNET_CONV + UNET_CONV3, "lora_unet_"),
                                     ("text_encoder", TE_LINEAR, "lora_te_")):
        for path in paths:
            target = lora_map.targets[prefix + path.replace(".", "_")]
            ours = merged[component][target.initializer]
            ours = ours.T if target.layout == "T" else ours
            theirs = _module(getattr(reference, component), path).weight.detach().numpy()
            base = target.read(demo_bundle)
            assert np.abs(theirs - base).max() > 1e-3  # the LoRA really changes this weight
            np.testing.assert_allclose(ours, theirs, atol=2e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("file,use", [
    ("both.safetensors", NetworkUse("both", 1.0, 1.0)),
    ("unet_only.safetensors", NetworkUse("both", 0.0, 1.0)),
    ("te_only.safetensors", NetworkUse("both", 1.0, 0.0)),
])
def test_image_equals_diffusers_with_the_lora_loaded(demo_pipeline, networks, demo_diffusers_dir, lora_dir,
                                                     file, use):
    """UNet-only, text-encoder-only and both: `<lora:both:te:unet>` with the other multiplier 0 is what diffusers
    draws with a file holding only that half."""
    network = load_network(lora_dir / "both.safetensors")
    pipeline, _ = networks.pipeline_for([(network, use, "both")])
    ours, noise = run_engine(pipeline)
    reference = reference_pipeline(demo_diffusers_dir, lora_dir, [file])
    theirs = run_reference(reference, demo_pipeline, noise)
    base, _ = run_engine(demo_pipeline)
    assert np.abs(ours.astype(int) - base.astype(int)).max() > 4  # the LoRA changes the picture
    assert np.abs(ours / 255.0 - np.floor(theirs * 255.0) / 255.0).max() <= 1 / 255 + 1e-4


@pytest.mark.slow
def test_two_loras_add_as_in_diffusers(demo_pipeline, networks, demo_diffusers_dir, lora_dir):
    both = load_network(lora_dir / "both.safetensors")
    other = load_network(lora_dir / "other.safetensors")
    pipeline, _ = networks.pipeline_for([(both, NetworkUse("both", 0.6, 0.6), "both"),
                                         (other, NetworkUse("other", 0.5, 0.5), "other")])
    ours, noise = run_engine(pipeline)
    reference = reference_pipeline(demo_diffusers_dir, lora_dir, ["both.safetensors", "other.safetensors"],
                                   [0.6, 0.5])
    theirs = run_reference(reference, demo_pipeline, noise)
    assert np.abs(ours / 255.0 - np.floor(theirs * 255.0) / 255.0).max() <= 1 / 255 + 1e-4


def test_weight_zero_and_switching_back_are_the_base_model(demo_pipeline, networks, lora_dir):
    base, _ = run_engine(demo_pipeline)
    network = load_network(lora_dir / "both.safetensors")
    zero, _ = networks.pipeline_for([(network, NetworkUse("both", 0.0, 0.0), "both")])
    assert zero is demo_pipeline
    with_lora, _ = networks.pipeline_for([(network, NetworkUse("both", 1.0, 1.0), "both")])
    changed, _ = run_engine(with_lora)
    assert not np.array_equal(changed, base)
    after, _ = run_engine(demo_pipeline)
    np.testing.assert_array_equal(after, base)
    # The same set again comes from the cache: the same sessions, the same picture.
    again, _ = networks.pipeline_for([(network, NetworkUse("both", 1.0, 1.0), "both")])
    assert again.backend.sessions is with_lora.backend.sessions
    np.testing.assert_array_equal(run_engine(again)[0], changed)


def test_ldm_named_unet_keys_find_the_same_weights(demo_bundle, torch_pipeline):
    """kohya files written with LDM block names (SDXL's, and A1111's own naming) reach the diffusers-named weights,
    checked against the spec's table of A1111's renaming."""
    lora_map = LoraMap.load(demo_bundle)
    assert lora_map.layers_per_block == torch_pipeline.unet.config.layers_per_block
    checked = 0
    for key in lora_map.targets:
        if not key.startswith("lora_unet_") or key.endswith(".bias"):
            continue
        ldm = diffusers_to_ldm(key[len("lora_unet_"):], torch_pipeline.unet.config.layers_per_block)
        if ldm is None:
            continue
        ldm = "lora_unet_" + ldm
        assert lora_map.find(ldm)[0] == key, ldm
        checked += 1
    assert checked > 80
