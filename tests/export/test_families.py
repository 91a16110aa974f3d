"""Model families: A1111's detection rules on single files written here, SD 2.x (eps and v) converted from an
A1111-layout file to the folder's exact weights, exported, drawing the folder export's images, and matching
diffusers' StableDiffusionPipeline on the same weights and noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.bundle import load_bundle
from engine.pipeline import Pipeline
from tests.export.family_models import reduced_config_set, save_sd2_folder, write_sd2_single_file

KINDS = ("eps", "v")


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    return reduced_config_set(tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="module")
def sd2(configs, tmp_path_factory):
    """kind → (diffusers folder, A1111 single file, bundle from the folder, bundle from the file)."""
    import torch

    from export.onnx_export import export_diffusers_folder
    from export.single_file import export_single_file

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sd2")
    made = {}
    for kind in KINDS:
        folder = save_sd2_folder(configs.sd2_v if kind == "v" else configs.sd2_base, root / f"folder-{kind}",
                                 v_prediction=kind == "v", seed=7)
        file = write_sd2_single_file(folder, root / f"sd2-{kind}.safetensors")
        folder_bundle = export_diffusers_folder(folder, root / f"bundle-folder-{kind}")
        file_bundle = export_single_file(file, root / f"bundle-file-{kind}", configs=configs)
        made[kind] = (folder, file, folder_bundle, file_bundle)
    return made


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_sd2_single_file_is_detected_and_converts_to_the_folder_weights(sd2, configs, kind):
    import torch
    from diffusers import StableDiffusionPipeline

    from export.single_file import detect_single_file, load_single_file_pipeline

    folder, file, _, _ = sd2[kind]
    detection = detect_single_file(file, configs)
    assert (detection.family, detection.in_channels) == ("sd2", 4)
    assert detection.prediction_type == ("v_prediction" if kind == "v" else "epsilon")
    assert detection.config_dir == (configs.sd2_v if kind == "v" else configs.sd2_base)
    pipe = load_single_file_pipeline(file, configs=configs)
    reference = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    for name in ("unet", "vae", "text_encoder"):
        got, want = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert got.keys() == want.keys(), name
        for key, value in want.items():
            assert torch.equal(got[key], value), f"{name}.{key}"
    assert pipe.scheduler.config.prediction_type == reference.scheduler.config.prediction_type
    # SD 2's tokenizer pads with "!" (id 0) after the EOS, as diffusers' SD 2 folders and A1111 do.
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert ids[:4] == [49406, 320, 2368, 49407] and set(ids[4:]) == {0}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_sd2_bundles_from_file_and_folder_draw_the_same_images(sd2, kind):
    from tests.engine.test_engine_smoke import make_plan

    _, _, folder_bundle, file_bundle = sd2[kind]
    manifest = load_bundle(file_bundle).manifest
    assert manifest.architecture == load_bundle(folder_bundle).manifest.architecture == "sd2"
    assert manifest.prediction_type == ("v_prediction" if kind == "v" else "epsilon")
    assert manifest.pad_token_id == 0 and manifest.text_hidden_size == 32
    a, b = Pipeline.from_path(folder_bundle), Pipeline.from_path(file_bundle)
    plan = make_plan(a, steps=3, sampler="DPM++ 2M", seeds=(11,))
    got, want = b.txt2img(plan), a.txt2img(plan)
    np.testing.assert_array_equal(got.latents[0], want.latents[0])
    assert np.array_equal(np.asarray(got.images[0]), np.asarray(want.images[0]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow
def test_sd2_matches_diffusers_with_every_unet_call(sd2, kind, monkeypatch):
    """The engine on the SD 2 bundle vs diffusers' StableDiffusionPipeline (Euler as A1111's, same noise): every
    UNet call's input, timestep and context, and the final image (≤ 1e-4)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from engine.images import decode_latents
    from tests.engine.test_reference_diffusers import STEPS, euler_reference, make_plan

    folder, _, folder_bundle, _ = sd2[kind]
    pipeline = Pipeline.from_path(folder_bundle)
    torch_pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    reference = euler_reference(torch_pipe)
    assert reference.scheduler.config.prediction_type == ("v_prediction" if kind == "v" else "epsilon")

    engine_calls = []
    run = pipeline.backend.run

    def recording_run(component, inputs):
        if component == "unet":
            engine_calls.append({k: np.asarray(v).copy() for k, v in inputs.items()})
        return run(component, inputs)

    monkeypatch.setattr(pipeline.backend, "run", recording_run)
    ref_calls = []

    def hook(_module, args, kwargs):
        context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
        ref_calls.append((args[0].detach().numpy().copy(), float(np.asarray(args[1]).reshape(-1)[0]),
                          context.detach().numpy().copy()))

    prompt, negative = "a red circle, blue sky", "blurry"
    plan = make_plan(pipeline, [prompt], [negative], 64, 64)
    noise = np.random.default_rng(5).standard_normal((1, 4, 8, 8)).astype(np.float32)
    result = pipeline.txt2img(plan, initial_noise=noise)
    images = decode_latents(pipeline.backend, pipeline.manifest, np.stack(result.latents))

    from engine.schedules import get_sigmas_uniform

    sigmas = [float(s) for s in get_sigmas_uniform(pipeline.schedule, STEPS)]
    handle = torch_pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            ref = reference(prompt=list(plan.prompts), negative_prompt=[negative], width=64, height=64,
                            guidance_scale=plan.cfg_scale, sigmas=sigmas, latents=torch.from_numpy(noise),
                            output_type="np").images
    finally:
        handle.remove()
    ref_images = np.moveaxis(ref, -1, 1)

    assert len(engine_calls) == len(ref_calls) == STEPS
    for call, (ref_sample, ref_t, ref_context) in zip(engine_calls, ref_calls, strict=True):
        # diffusers batches [uncond, cond]; the engine's order is its own: compare as sets of rows.
        assert call["sample"].shape == ref_sample.shape == (2, 4, 8, 8)
        np.testing.assert_allclose(call["sample"][0], ref_sample[0], atol=1e-5 * np.abs(ref_sample).max())
        np.testing.assert_allclose(call["timestep"], ref_t, atol=2e-3)
        ours = call["encoder_hidden_states"]
        for a in ours:  # each of our contexts is one of diffusers' (cond and uncond, in either order)
            assert min(np.abs(a - b).max() for b in ref_context) <= 1e-5
        assert np.abs(ours[0] - ours[1]).max() > 1e-2
    assert images.shape == ref_images.shape
    assert np.abs(images - ref_images).max() <= 1e-4
    assert ref_images.std() > 0.01  # not a flat image


@pytest.mark.slow
def test_sd2_clip_skip_is_ignored_as_a1111_does(sd2):
    from engine.conditioning import TextEncoderOptions

    _, _, folder_bundle, _ = sd2["eps"]
    pipeline = Pipeline.from_path(folder_bundle)
    encoder = pipeline.prompt_encoder
    one = encoder.encode_texts(["a red circle"], TextEncoderOptions(clip_skip=1))[0]
    two = encoder.encode_texts(["a red circle"], TextEncoderOptions(clip_skip=2))[0]
    np.testing.assert_array_equal(one, two)


@pytest.mark.slow
def test_sd_turbo_sgm_layout_is_sd2_and_renders_at_cfg_1(sd2, configs, tmp_path):
    """SD-Turbo saved by SGM code (`conditioner.embedders.0.model.*`, 1024-wide here 32): A1111 renames it to
    the SD 2 layout; it converts to the same weights and runs 1 step at CFG 1 (the uncond pass skipped)."""
    import torch

    from export.single_file import detect_single_file, load_single_file_pipeline
    from tests.engine.test_engine_smoke import make_plan

    folder, file, folder_bundle, _ = sd2["eps"]
    sgm = write_sd2_single_file(folder, tmp_path / "sd_turbo.safetensors", sgm=True)
    detection = detect_single_file(sgm, configs)
    assert (detection.family, detection.variant, detection.prediction_type) == ("sd2", "turbo", "epsilon")
    a = load_single_file_pipeline(sgm, configs=configs).text_encoder.state_dict()
    b = load_single_file_pipeline(file, configs=configs).text_encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)

    pipeline = Pipeline.from_path(folder_bundle)
    calls = []
    run = pipeline.backend.run
    pipeline.backend.run = lambda c, i: (calls.append(i["sample"].shape[0]) if c == "unet" else None) or run(c, i)
    plan = make_plan(pipeline, steps=1, sampler="Euler a", seeds=(3,))
    from dataclasses import replace

    result = pipeline.txt2img(replace(plan, cfg_scale=1.0))
    assert calls == [1] and np.isfinite(result.latents[0]).all()


# --- detection rules on synthetic key sets (shapes only matter) ---------------------------------------------

def _tensors(spec: dict) -> dict:
    import torch

    return {k: torch.zeros(*s) for k, s in spec.items()}


UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SD1_CLIP = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
SD2_PROJ = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"
BIGG_LN = "conditioner.embedders.1.model.ln_final.weight"
EMB0_LN = "conditioner.embedders.0.model.ln_final.weight"
MID_Q = "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight"


@pytest.mark.parametrize("spec,family,variant,channels,config", [
    ({UNET_IN: (320, 4, 3, 3), SD1_CLIP: (77, 768)}, "sd1", "base", 4, "sd15"),
    ({UNET_IN: (320, 9, 3, 3), SD1_CLIP: (77, 768)}, "sd1", "inpainting", 9, "sd15"),
    ({UNET_IN: (320, 8, 3, 3), SD1_CLIP: (77, 768)}, "sd1", "instruct-pix2pix", 8, "sd15"),
    ({UNET_IN: (320, 4, 3, 3), BIGG_LN: (1280,), MID_Q: (1280, 1280)}, "sdxl", "base", 4, "sdxl-base"),
    ({UNET_IN: (320, 9, 3, 3), BIGG_LN: (1280,), MID_Q: (1280, 1280)}, "sdxl", "inpainting", 9, "sdxl-base"),
    ({UNET_IN: (384, 4, 3, 3), EMB0_LN: (1280,)}, "sdxl-refiner", "refiner", 4, "sdxl-refiner"),
])
def test_detection_follows_a1111_key_and_shape_rules(spec, family, variant, channels, config):
    from export.detect import CONFIG_ROOT, detect_state_dict

    detection = detect_state_dict(_tensors(spec))
    assert (detection.family, detection.variant, detection.in_channels) == (family, variant, channels)
    assert detection.config_dir == CONFIG_ROOT / config and detection.prediction_type == "epsilon"


def test_sd2_detection_needs_the_v_probe_and_sgm_turbo_is_renamed():
    from export.detect import CONFIG_ROOT, detect_state_dict, rename_sgm_turbo

    sd2 = detect_state_dict(_tensors({UNET_IN: (320, 4, 3, 3), SD2_PROJ: (3072, 1024)}))
    assert (sd2.family, sd2.prediction_type) == ("sd2", None)
    assert sd2.with_prediction("v_prediction").config_dir == CONFIG_ROOT / "sd2-v"
    assert sd2.with_prediction("epsilon").config_dir == CONFIG_ROOT / "sd2-base"
    sgm = _tensors({UNET_IN: (320, 4, 3, 3), EMB0_LN: (1024,),
                    "conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight": (3072, 1024)})
    renamed = rename_sgm_turbo(sgm)
    assert "cond_stage_model.model.ln_final.weight" in renamed
    turbo = detect_state_dict(renamed, sgm_turbo=True)
    assert (turbo.family, turbo.variant) == ("sd2", "turbo")
    # a 1280-wide embedders.0 is the SDXL refiner, not renamed
    refiner = _tensors({UNET_IN: (384, 4, 3, 3), EMB0_LN: (1280,)})
    assert rename_sgm_turbo(refiner) is refiner


@pytest.mark.parametrize("spec,message", [
    ({UNET_IN: (320, 9, 3, 3), SD2_PROJ: (3072, 1024)}, "SD 2.x inpainting"),
    ({UNET_IN: (320, 5, 3, 3), SD2_PROJ: (3072, 1024),
      "depth_model.model.pretrained.act_postprocess3.0.project.0.bias": (256,)}, "depth"),
    ({UNET_IN: (320, 4, 3, 3), BIGG_LN: (1280,)}, "SSD-1B"),
    ({"model.diffusion_model.x_embedder.proj.weight": (1536, 16, 2, 2)}, "SD 3"),
    ({"first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3)}, "no UNet input convolution"),
    ({UNET_IN: (320, 4, 3, 3)}, "no CLIP text encoder"),
    ({UNET_IN: (320, 6, 3, 3), SD1_CLIP: (77, 768)}, "input channels 6"),
])
def test_unsupported_families_are_named_with_what_was_found(spec, message):
    from export.detect import SingleFileError, detect_state_dict

    with pytest.raises(SingleFileError, match=message) as info:
        detect_state_dict(_tensors(spec))
    if "found" in message or "no " in message:
        assert "tensors; keys" in str(info.value)  # the message lists what the file holds


def test_unknown_file_leaves_no_bundle(tmp_path):
    from safetensors.torch import save_file

    from export.__main__ import main

    path = tmp_path / "vae.safetensors"
    save_file(_tensors({"first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3)}), path)
    with pytest.raises(SystemExit, match="first_stage_model.encoder"):
        main(["convert", str(path), "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae.safetensors"]


def test_a_yaml_beside_the_checkpoint_sets_the_prediction_type(tmp_path):
    from export.detect import yaml_prediction_type

    ckpt = tmp_path / "model.safetensors"
    assert yaml_prediction_type(ckpt) is None
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert yaml_prediction_type(ckpt) == "v_prediction"
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert yaml_prediction_type(ckpt) == "epsilon"


@pytest.mark.parametrize("unet,scheduler,family,prediction", [
    ({"cross_attention_dim": 768}, {}, "sd1", "epsilon"),
    ({"cross_attention_dim": 1024}, {"prediction_type": "v_prediction"}, "sd2", "v_prediction"),
    ({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}, {}, "sdxl", "epsilon"),
    ({"cross_attention_dim": 1280, "addition_embed_type": "text_time"}, {}, "sdxl-refiner", "epsilon"),
])
def test_diffusers_folder_family_from_its_configs(tmp_path, unet, scheduler, family, prediction):
    from export.detect import detect_diffusers_folder

    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(unet))
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    detection = detect_diffusers_folder(tmp_path)
    assert (detection.family, detection.prediction_type) == (family, prediction)


def test_shipped_sd2_configs_have_the_published_parameter_counts():
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from export.detect import CONFIG_ROOT

    for name in ("sd2-base", "sd2-v"):
        folder = CONFIG_ROOT / name
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        assert sum(p.numel() for p in unet.parameters()) == 865_910_724
        assert sum(p.numel() for p in text.parameters()) == 340_387_840
        assert text.config.num_hidden_layers == 23 and text.config.hidden_act == "gelu"
    sched = json.loads((CONFIG_ROOT / "sd2-v/scheduler/scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"



@pytest.mark.slow
def test_cli_detect_prints_the_family(sd2, configs, monkeypatch, capsys):
    import export.single_file as single_file
    from export.__main__ import main

    real = single_file.detect_single_file
    monkeypatch.setattr(single_file, "detect_single_file", lambda path: real(path, configs))
    assert main(["detect", str(sd2["v"][1])]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["family"], printed["prediction_type"]) == ("sd2", "v_prediction")
    assert main(["detect", str(sd2["v"][0])]) == 0  # the diffusers folder, from its configs
    assert json.loads(capsys.readouterr().out)["family"] == "sd2"


@pytest.mark.slow
def test_a_yaml_beside_the_file_overrides_the_v_probe(sd2, configs, tmp_path, demo_diffusers_dir):
    import shutil

    from export.single_file import detect_single_file, load_single_file_pipeline
    from tests.export.test_single_file import copy_configs, write_ldm_checkpoint

    eps = shutil.copyfile(sd2["eps"][1], tmp_path / "model.safetensors")
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    assert detect_single_file(eps, configs).prediction_type == "v_prediction"  # the probe alone says eps
    # SD 1.x v-prediction fine-tunes ship such a yaml too
    sd1 = write_ldm_checkpoint(demo_diffusers_dir, tmp_path / "sd1v.safetensors")
    (tmp_path / "sd1v.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    tiny = copy_configs(demo_diffusers_dir, tmp_path / "tiny")
    pipe = load_single_file_pipeline(sd1, tiny)
    assert pipe.scheduler.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("variant", ["base", "inpainting", "refiner"])
@pytest.mark.slow
def test_sdxl_single_files_are_detected_and_convert_to_the_same_weights(configs, tmp_path, variant):
    """SDXL base, 9-channel inpainting and refiner files in SGM layout, from toy configs derived from the
    shipped ones: detected as A1111 does, converted to a diffusers SDXL pipeline with exactly the weights
    written (export_pipeline dispatches SDXL pipelines to the SDXL exporter, tested on its own)."""
    from dataclasses import replace

    import torch

    from export.detect import CONFIG_ROOT
    from export.single_file import detect_single_file, load_single_file_pipeline
    from tests.export.family_models import random_sdxl_components, reduce_sdxl_configs, write_sdxl_single_file

    refiner = variant == "refiner"
    xl = replace(configs,
                 sdxl_base=reduce_sdxl_configs(CONFIG_ROOT / "sdxl-base", tmp_path / "sdxl-base", False),
                 sdxl_refiner=reduce_sdxl_configs(CONFIG_ROOT / "sdxl-refiner", tmp_path / "sdxl-refiner", True))
    components = random_sdxl_components(xl.sdxl_refiner if refiner else xl.sdxl_base, seed=5,
                                        in_channels=9 if variant == "inpainting" else 4)
    file = write_sdxl_single_file(components, tmp_path / f"xl-{variant}.safetensors")

    detection = detect_single_file(file, xl)
    assert detection.family == ("sdxl-refiner" if refiner else "sdxl") and detection.variant == variant
    assert detection.in_channels == (9 if variant == "inpainting" else 4)
    pipe = load_single_file_pipeline(file, configs=xl)
    assert type(pipe).__name__ == ("StableDiffusionXLImg2ImgPipeline" if refiner else "StableDiffusionXLPipeline")
    for name, model in components.items():
        got, want = getattr(pipe, name).state_dict(), model.state_dict()
        assert got.keys() == want.keys(), name
        for key, value in want.items():
            assert torch.equal(got[key], value), f"{name}.{key}"
    assert pipe.tokenizer_2.pad_token_id == 0
    if not refiner:
        assert pipe.tokenizer.pad_token_id == 49407
    assert pipe.vae.config.scaling_factor == 0.13025



def test_a_ckpt_that_would_run_code_is_refused_without_running_it(tmp_path):
    import torch

    from export.detect import SingleFileError
    from export.single_file import load_state_dict

    marker = tmp_path / "ran"

    class Payload:  # unpickling this runs `marker.touch()`: a safe loader must refuse it
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1), "x": Payload()}},
               tmp_path / "evil.ckpt")
    with pytest.raises(SingleFileError, match="cannot read"):
        load_state_dict(tmp_path / "evil.ckpt")
    assert not marker.exists()
