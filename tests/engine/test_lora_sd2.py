"""LoRA on SD 2.x: a kohya file (diffusers-named UNet keys, `lora_te_` for the OpenCLIP encoder as diffusers ships
it, proj_in/proj_out Linear) merged into a tiny SD 2.x (v) bundle: the UNet and text-encoder sessions compute what
diffusers' modules compute with the same file loaded through `load_lora_weights` and fused."""

from __future__ import annotations

import numpy as np
import pytest

from engine.lora import NetworkUse, load_network
from engine.network_sessions import ModelNetworks
from engine.safetensors_file import write_file

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

RANK = 4
UNET_PARTS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TE_PARTS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def kohya_lora(pipe, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for component, prefix, parts in (("unet", "lora_unet_", UNET_PARTS), ("text_encoder", "lora_te_", TE_PARTS)):
        for path, module in getattr(pipe, component).named_modules():
            if isinstance(module, torch.nn.Linear) and path.endswith(parts):
                out_ch, in_ch = module.weight.shape
                key = prefix + path.replace(".", "_")
                tensors[f"{key}.lora_down.weight"] = rng.standard_normal((RANK, in_ch)).astype(np.float32) * 0.2
                tensors[f"{key}.lora_up.weight"] = rng.standard_normal((out_ch, RANK)).astype(np.float32) * 0.2
                tensors[f"{key}.alpha"] = np.asarray(2.0, dtype=np.float32)
    return tensors


@pytest.fixture(scope="module")
def sd2_lora(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    from engine.pipeline import Pipeline
    from export.onnx_export import export_diffusers_folder
    from tests.export.family_models import reduced_config_set, save_sd2_folder

    root = tmp_path_factory.mktemp("sd2-lora")
    configs = reduced_config_set(root / "configs")
    folder = save_sd2_folder(configs.sd2_v, root / "folder", v_prediction=True, seed=3)
    bundle = export_diffusers_folder(folder, root / "bundle")
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    write_file(root / "sd2.safetensors", kohya_lora(pipe, seed=5))
    pipe.load_lora_weights(str(root), weight_name="sd2.safetensors", adapter_name="sd2")
    pipe.fuse_lora(lora_scale=0.8, components=["unet", "text_encoder"])
    pipe.unload_lora_weights()
    ours = Pipeline.from_path(bundle)
    return ours, pipe, root / "sd2.safetensors"


def test_sd2_lora_sessions_compute_what_diffusers_fused_modules_compute(sd2_lora):
    ours, fused, path = sd2_lora
    network = load_network(path)
    lora, reports = ModelNetworks(ours).pipeline_for([(network, NetworkUse("sd2", 0.8, 0.8), "sd2")])
    assert reports["sd2"].unmatched_modules == () and reports["sd2"].applied_modules == len(network.modules)
    assert set(lora.backend.sessions) == {"unet", "text_encoder"}
    assert any("proj_in" in m for m in network.modules)  # SD 2.x's Linear projections are LoRA targets too

    ids = np.array([[49406, 320, 1929, 3180, 49407] + [49407] * 72], dtype=np.int64)
    dtypes = {spec.name: spec.dtype for spec in ours.backend.input_specs("text_encoder")}
    feed = ours.embedding_table.feeds("text_encoder", ids, None, dtypes)  # + inputs_embeds where the graph takes them
    hidden = lora.backend.run("text_encoder", feed)["last_hidden_state"]
    with torch.no_grad():
        theirs = fused.text_encoder(torch.from_numpy(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(hidden, theirs, atol=1e-4, rtol=0)
    base_hidden = ours.backend.run("text_encoder", feed)["last_hidden_state"]
    assert np.abs(base_hidden - theirs).max() > 1e-2  # the LoRA changes the text encoder

    rng = np.random.default_rng(0)
    width = fused.unet.config.cross_attention_dim
    sample = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    context = rng.standard_normal((1, 77, width)).astype(np.float32)
    specs = {s.name: s for s in ours.backend.input_specs("unet")}
    timestep = np.full((1,) if specs["timestep"].shape else (), 500, dtype=specs["timestep"].dtype)
    out = lora.backend.run("unet", {"sample": sample, "timestep": timestep, "encoder_hidden_states": context})
    ours_out = next(iter(out.values()))
    base_out = next(iter(ours.backend.run("unet", {"sample": sample, "timestep": timestep,
                                                    "encoder_hidden_states": context}).values()))
    with torch.no_grad():
        theirs = fused.unet(torch.from_numpy(sample), 500, torch.from_numpy(context)).sample.numpy()
    assert np.abs(ours_out - base_out).max() > 1e-2 * np.abs(theirs).max()  # the LoRA changes the UNet
    np.testing.assert_allclose(ours_out, theirs, atol=1e-4 * max(1.0, np.abs(theirs).max()), rtol=0)
