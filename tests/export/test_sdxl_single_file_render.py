"""SDXL A1111 single files end to end: base, 9-channel inpainting and refiner files in SGM layout, written here
from reduced-width configs derived from the shipped ones, are detected, exported through `export_single_file`
and draw images identical to the export of a diffusers folder holding the same weights (same plan, same noise).
test_families.py checks the converted weights; this checks what the bundles render."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.bundle import load_bundle
from engine.pipeline import Pipeline
from engine.plan import GenerationPlan, Img2ImgPlan
from tests.export.family_models import (
    random_sdxl_components,
    reduce_sdxl_configs,
    reduced_config_set,
    save_sdxl_folder,
    write_sdxl_single_file,
)

pytest.importorskip("torch")
pytest.importorskip("diffusers")

VARIANTS = ("base", "inpainting", "refiner")


@pytest.fixture(scope="module")
def xl_configs(tmp_path_factory):
    from export.detect import CONFIG_ROOT

    root = tmp_path_factory.mktemp("xl-configs")
    return replace(reduced_config_set(root / "sd"),
                   sdxl_base=reduce_sdxl_configs(CONFIG_ROOT / "sdxl-base", root / "sdxl-base", False),
                   sdxl_refiner=reduce_sdxl_configs(CONFIG_ROOT / "sdxl-refiner", root / "sdxl-refiner", True))


@pytest.fixture(scope="module")
def xl(xl_configs, tmp_path_factory):
    """variant → (A1111 single file, bundle from the diffusers folder, bundle from the single file)."""
    import torch

    from export.onnx_export import export_diffusers_folder
    from export.single_file import export_single_file

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("xl")
    made = {}
    for variant in VARIANTS:
        refiner = variant == "refiner"
        configs = xl_configs.sdxl_refiner if refiner else xl_configs.sdxl_base
        components = random_sdxl_components(configs, seed=13, in_channels=9 if variant == "inpainting" else 4)
        file = write_sdxl_single_file(components, root / f"xl-{variant}.safetensors")
        folder = save_sdxl_folder(components, configs, root / f"folder-{variant}", refiner)
        folder_bundle = export_diffusers_folder(folder, root / f"bundle-folder-{variant}")
        file_bundle = export_single_file(file, root / f"bundle-file-{variant}", configs=xl_configs)
        made[variant] = (file, folder_bundle, file_bundle)
    return made


def _plan(steps: int = 3, **extra) -> GenerationPlan:
    return GenerationPlan(prompts=("a red circle",), negative_prompts=("blurry",), seeds=(21,), subseeds=(21,),
                          width=64, height=64, steps=steps, cfg_scale=5.0, sampler="DPM++ 2M",
                          scheduler="automatic", **extra)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.slow
def test_sdxl_single_file_is_detected_and_its_bundle_describes_the_same_model(xl, xl_configs, variant):
    from export.single_file import detect_single_file

    file, folder_bundle, file_bundle = xl[variant]
    detection = detect_single_file(file, xl_configs)
    assert detection.family == ("sdxl-refiner" if variant == "refiner" else "sdxl")
    assert (detection.variant, detection.in_channels) == (variant, 9 if variant == "inpainting" else 4)
    got, want = load_bundle(file_bundle).manifest, load_bundle(folder_bundle).manifest
    assert got.architecture == want.architecture == ("sdxl-refiner" if variant == "refiner" else "sdxl")
    assert got.unet_in_channels == want.unet_in_channels == detection.in_channels
    assert got.vae_scaling_factor == want.vae_scaling_factor == 0.13025
    for field in ("prediction_type", "text_hidden_size", "text_2_hidden_size", "text_pooled_size", "tokenizer",
                  "tokenizer_2", "noise_schedule"):
        assert getattr(got, field) == getattr(want, field), field


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.slow
def test_sdxl_single_file_renders_the_folder_exports_images(xl, variant):
    """txt2img (the inpainting model with A1111's blank-mask conditioning) and img2img, same plan, same noise:
    the single file's bundle and the folder's draw identical latents and images."""
    from PIL import Image

    _, folder_bundle, file_bundle = xl[variant]
    a, b = Pipeline.from_path(folder_bundle), Pipeline.from_path(file_bundle)
    noise = np.random.default_rng(3).standard_normal((1, *a.latent_shape(64, 64))).astype(np.float32)
    got, want = b.txt2img(_plan(), initial_noise=noise), a.txt2img(_plan(), initial_noise=noise)
    np.testing.assert_array_equal(got.latents[0], want.latents[0])
    assert np.array_equal(np.asarray(got.images[0]), np.asarray(want.images[0]))
    assert np.asarray(want.images[0]).std() > 0

    init = Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    plan = _plan(steps=4, img2img=Img2ImgPlan(init_images=(init,), denoising_strength=0.6))
    got, want = b.img2img(plan, initial_noise=noise), a.img2img(plan, initial_noise=noise)
    np.testing.assert_array_equal(got.latents[0], want.latents[0])
    assert np.array_equal(np.asarray(got.images[0]), np.asarray(want.images[0]))
