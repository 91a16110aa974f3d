"""LoRA on SDXL end to end: a kohya SDXL LoRA (UNet keys in SGM/LDM block naming as sd-scripts writes them for
SDXL, both text encoders as lora_te1_/lora_te2_) merged into a tiny SDXL bundle renders what diffusers'
StableDiffusionXLPipeline renders with the same file loaded through `load_lora_weights` (diffusers converts the
kohya keys itself: lora_conversion_utils._maybe_map_sgm_blocks_to_diffusers) and fused."""

from __future__ import annotations

import numpy as np
import pytest

from engine.lora import LoraMap, NetworkUse, load_network
from engine.network_sessions import ModelNetworks
from engine.safetensors_file import write_file
from tests.engine.test_sdxl_parity import IMAGE_ATOL, LATENT_RTOL, run_both
from tests.ldm_names import diffusers_to_ldm

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

RANK = 4
ALPHA = 2.0
# kohya's default LoRA targets (sd-scripts networks/lora.py: the Linear layers of Transformer2DModel; SDXL's
# proj_in/proj_out are Linear) plus resnet convs and time-embedding projections as LoCon files carry them.
ATTENTION_PARTS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
RESNET_PARTS = ("conv1", "conv2", "time_emb_proj")
TE_PARTS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _factors(rng, weight, scale: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    out_ch, in_ch = weight.shape[:2]
    kernel = tuple(weight.shape[2:])
    down = rng.standard_normal((RANK, in_ch, *kernel)).astype(np.float32) * scale
    up = rng.standard_normal((out_ch, RANK, *((1, 1) if kernel else ()))).astype(np.float32) * scale
    return down, up


def kohya_sdxl_lora(pipe, seed: int) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The file's tensors, and how many modules it targets per component."""
    tensors: dict[str, np.ndarray] = {}
    counts = {"unet": 0, "text_encoder": 0, "text_encoder_2": 0}
    rng = np.random.default_rng(seed)

    def add(key: str, weight, component: str) -> None:
        down, up = _factors(rng, weight.detach().numpy())
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = np.asarray(ALPHA, dtype=np.float32)
        counts[component] += 1

    lpb = pipe.unet.config.layers_per_block
    for path, module in pipe.unet.named_modules():
        wanted = ("attentions" in path and path.endswith(ATTENTION_PARTS)) or (
            "resnets" in path and path.endswith(RESNET_PARTS))
        if wanted and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            name = diffusers_to_ldm(path.replace(".", "_"), lpb)
            assert name is not None, path
            add("lora_unet_" + name, module.weight, "unet")
    for component, prefix in (("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
        for path, module in getattr(pipe, component).named_modules():
            if isinstance(module, torch.nn.Linear) and path.endswith(TE_PARTS):
                add(prefix + path.replace(".", "_"), module.weight, component)
    return tensors, counts


@pytest.fixture(scope="module")
def sdxl_lora(tmp_path_factory):
    """(our pipeline, its LoRA machinery, the torch pipeline with the LoRA fused, the file, targets per component,
    the base pipeline's image inputs)."""
    from engine.pipeline import Pipeline
    from export.onnx_export import export_pipeline
    from export.sdxl_demo import build_tiny_sdxl_pipeline

    torch_pipe = build_tiny_sdxl_pipeline(seed=0)
    root = tmp_path_factory.mktemp("sdxl-lora")
    bundle = export_pipeline(torch_pipe, root / "tiny-sdxl", name="tiny-sdxl")
    tensors, counts = kohya_sdxl_lora(torch_pipe, seed=11)
    write_file(root / "xl.safetensors", tensors)
    base_torch = build_tiny_sdxl_pipeline(seed=0)
    torch_pipe.load_lora_weights(str(root), weight_name="xl.safetensors", adapter_name="xl")
    torch_pipe.fuse_lora(lora_scale=1.0, components=["unet", "text_encoder", "text_encoder_2"])
    torch_pipe.unload_lora_weights()
    pipeline = Pipeline.from_path(bundle)
    return pipeline, ModelNetworks(pipeline), torch_pipe, base_torch, root / "xl.safetensors", counts, bundle


def test_sdxl_bundle_maps_every_kohya_target(sdxl_lora):
    """Every module of the file finds its weight: SGM-named UNet keys and both encoders (lora_map.json of the
    SDXL export), and the merge equals diffusers' fused weights."""
    from engine.lora import merged_weights

    pipeline, _, fused, _, path, counts, bundle = sdxl_lora
    lora_map = LoraMap.load(bundle)
    assert {t.component for t in lora_map.targets.values()} == {"unet", "text_encoder", "text_encoder_2"}
    network = load_network(path)
    merged, reports = merged_weights(bundle, lora_map, [(network, NetworkUse("xl", 1.0, 1.0))])
    assert reports["xl"].unmatched_modules == ()
    assert reports["xl"].applied_modules == sum(counts.values())
    assert counts["unet"] > 60 and counts["text_encoder"] == counts["text_encoder_2"] == 18
    assert {c: len(v) for c, v in merged.items()} == counts
    checked = 0
    for component in counts:
        named = dict(getattr(fused, component).named_modules())
        for key, target in lora_map.targets.items():
            if target.component != component or target.initializer not in merged[component] or ".bias" in key:
                continue
            ours = merged[component][target.initializer]
            ours = ours.T if target.layout == "T" else ours
            path = next(p for p in named if key.endswith("_" + p.replace(".", "_")) and
                        key == ("lora_unet_" if component == "unet" else
                                "lora_te1_" if component == "text_encoder" else "lora_te2_")
                        + p.replace(".", "_"))
            theirs = named[path].weight.detach().numpy()
            assert np.abs(theirs - target.read(bundle)).max() > 1e-3, key  # the LoRA changes it
            np.testing.assert_allclose(ours, theirs, atol=2e-6, rtol=1e-5, err_msg=key)
            checked += 1
    assert checked == sum(counts.values())


def test_sdxl_image_with_the_lora_equals_diffusers(sdxl_lora):
    pipeline, networks, fused, base_torch, path, _, _ = sdxl_lora
    network = load_network(path)
    ours, reports = networks.pipeline_for([(network, NetworkUse("xl", 1.0, 1.0), "xl")])
    assert set(ours.backend.sessions) == {"unet", "text_encoder", "text_encoder_2"}
    latents, images, ref_latents, ref_images = run_both(ours, fused, ["a red circle on grass"], ["blurry"], 64, 48)
    assert np.abs(latents - ref_latents).max() <= LATENT_RTOL * np.abs(ref_latents).max()
    assert np.abs(images - ref_images).max() <= IMAGE_ATOL
    base_latents, _, base_ref, _ = run_both(pipeline, base_torch, ["a red circle on grass"], ["blurry"], 64, 48)
    assert np.abs(base_latents - base_ref).max() <= LATENT_RTOL * np.abs(base_ref).max()
    assert np.abs(latents - base_latents).max() > 0.05 * np.abs(base_latents).max()  # the LoRA changes the image


def test_sdxl_unet_only_lora_keeps_both_text_encoder_sessions(sdxl_lora):
    """`<lora:xl:0:1>`: only the UNet is rebuilt; the text encoders stay the base sessions."""
    pipeline, networks, _, _, path, _, _ = sdxl_lora
    network = load_network(path)
    ours, _ = networks.pipeline_for([(network, NetworkUse("xl", 0.0, 1.0), "xl")])
    assert set(ours.backend.sessions) == {"unet"}
    te_only, _ = networks.pipeline_for([(network, NetworkUse("xl", 1.0, 0.0), "xl")])
    assert set(te_only.backend.sessions) == {"text_encoder", "text_encoder_2"}


