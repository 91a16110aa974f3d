"""The exporter's bundle: manifest, portable standard-op ONNX, the UNet's dynamic IO contract, atomic writes,
and every component equal to the torch module it came from."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.bundle import MANIFEST_NAME, is_bundle, load_bundle

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
# The IO contract of docs/architecture.md ("The bundle").
CONTRACT = {
    "text_encoder": (["input_ids", "inputs_embeds"], ["last_hidden_state", "pooler_output", "normed_hidden_states"]),
    "unet": (["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
    "vae_encoder": (["sample"], ["latent_parameters"]),
    "vae_decoder": (["latent_sample"], ["sample"]),
}


def onnx_model(bundle: Path, component: str):
    import onnx

    return onnx.load(str(bundle / component / "model.onnx"), load_external_data=False)


def dims(value_info) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@functools.cache
def session(bundle: Path, component: str):
    import onnxruntime as ort

    return ort.InferenceSession(str(bundle / component / "model.onnx"), providers=["CPUExecutionProvider"])


# --- manifest ---------------------------------------------------------------------------------------------


def test_manifest_describes_the_source(demo_bundle, demo_diffusers_dir):
    raw = json.loads((demo_bundle / MANIFEST_NAME).read_text())
    manifest = load_bundle(demo_bundle).manifest
    vae = json.loads((demo_diffusers_dir / "vae" / "config.json").read_text())
    unet = json.loads((demo_diffusers_dir / "unet" / "config.json").read_text())
    text = json.loads((demo_diffusers_dir / "text_encoder" / "config.json").read_text())
    scheduler = json.loads((demo_diffusers_dir / "scheduler" / "scheduler_config.json").read_text())

    assert raw["format"] == "sdedge-bundle" and raw["architecture"] == "sd1"
    assert raw["prediction_type"] == scheduler["prediction_type"] == "epsilon"
    assert raw["vae_scale_factor"] == 2 ** (len(vae["block_out_channels"]) - 1) == 8
    assert raw["vae_scaling_factor"] == pytest.approx(vae["scaling_factor"])
    assert raw["latent_channels"] == vae["latent_channels"] and raw["unet_in_channels"] == unet["in_channels"]
    assert (raw["text_hidden_size"], raw["text_num_layers"]) == (text["hidden_size"], text["num_hidden_layers"])
    assert raw["noise_schedule"] == {k: scheduler[k] for k in raw["noise_schedule"]}
    assert raw["opset"] >= 17 and raw["precision"] == "fp32"

    # Model hash: sha256 over the source weight files in path order, computed here independently.
    digest = hashlib.sha256()
    for path in sorted(p for p in demo_diffusers_dir.rglob("*") if p.suffix == ".safetensors"):
        digest.update(path.read_bytes())
    assert raw["source_sha256"] == digest.hexdigest()
    assert manifest.short_hash == digest.hexdigest()[:10]

    for component, (inputs, outputs) in CONTRACT.items():
        model = onnx_model(demo_bundle, component)
        assert [i.name for i in model.graph.input] == inputs
        assert [o.name for o in model.graph.output] == outputs
        assert sorted(raw["io"][component]["inputs"]) == sorted(inputs)
        assert sorted(raw["io"][component]["outputs"]) == sorted(outputs)


def test_optimum_layout(demo_bundle):
    assert is_bundle(demo_bundle)
    for component in COMPONENTS:
        assert (demo_bundle / component / "model.onnx").is_file()
    index = json.loads((demo_bundle / "model_index.json").read_text())
    assert set(COMPONENTS) | {"tokenizer", "scheduler"} <= set(index)
    assert (demo_bundle / "tokenizer" / "vocab.json").is_file() and (demo_bundle / "tokenizer" / "merges.txt").is_file()
    assert (demo_bundle / "scheduler" / "scheduler_config.json").is_file()
    vocab = json.loads((demo_bundle / "tokenizer" / "vocab.json").read_text())
    assert len(vocab) == 49408


# --- portable ONNX ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("component", COMPONENTS)
def test_standard_onnx_ops_only(demo_bundle, component):
    import onnx

    onnx.checker.check_model(str(demo_bundle / component / "model.onnx"))
    model = onnx_model(demo_bundle, component)
    opsets = {o.domain: o.version for o in model.opset_import}
    assert set(opsets) <= {"", "ai.onnx"}, opsets  # no com.microsoft or other custom domains
    assert max(opsets.values()) >= 17
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert not model.functions
    assert all(i.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64)
               for i in model.graph.input)  # fp32 (ids int64)


def test_unet_axes_are_dynamic(demo_bundle):
    graph = onnx_model(demo_bundle, "unet").graph
    shapes = {v.name: dims(v) for v in [*graph.input, *graph.output]}
    batch, _, height, width = shapes["sample"]
    assert all(isinstance(d, str) for d in (batch, height, width)) and len({batch, height, width}) == 3
    assert shapes["sample"][1] == 4
    assert shapes["timestep"] == [batch]  # one timestep per sample
    assert shapes["encoder_hidden_states"][0] == batch
    assert isinstance(shapes["encoder_hidden_states"][1], str)  # token axis: 77·k
    assert shapes["out_sample"] == [batch, 4, height, width]


# --- equal to torch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,h,w,tokens", [(3, 9, 17, 77), (2, 5, 7, 154), (1, 8, 128, 77), (2, 6, 6, 77)])
@pytest.mark.slow
def test_unet_matches_torch_at_odd_sizes(demo_bundle, torch_pipeline, batch, h, w, tokens):
    import torch

    rng = np.random.default_rng(batch * 1000 + h * 10 + w)
    sample = rng.standard_normal((batch, 4, h, w)).astype(np.float32)
    timestep = rng.uniform(0, 999, batch).astype(np.float32)  # a different t for every sample
    context = rng.standard_normal((batch, tokens, 32)).astype(np.float32)
    out = session(demo_bundle, "unet").run(
        None, {"sample": sample, "timestep": timestep, "encoder_hidden_states": context}
    )[0]
    with torch.no_grad():
        ref = torch_pipeline.unet(torch.from_numpy(sample), torch.from_numpy(timestep),
                                  torch.from_numpy(context)).sample.numpy()
    assert out.shape == ref.shape == (batch, 4, h, w)
    assert np.abs(out - ref).max() <= 1e-4
    if batch > 1:  # per-sample timesteps really are per sample: row 0 alone at its own t gives the same
        alone = session(demo_bundle, "unet").run(
            None, {"sample": sample[:1], "timestep": timestep[:1], "encoder_hidden_states": context[:1]}
        )[0]
        np.testing.assert_allclose(alone[0], out[0], atol=1e-5)
        swapped = session(demo_bundle, "unet").run(
            None, {"sample": sample[:1], "timestep": timestep[1:2], "encoder_hidden_states": context[:1]}
        )[0]
        assert np.abs(swapped[0] - out[0]).max() > 1e-3


def test_text_encoder_matches_torch_including_clip_skip_layers(demo_bundle, torch_pipeline):
    import torch

    ids = torch_pipeline.tokenizer(["a red circle", "a dog, on the beach, highly detailed"], padding="max_length",
                                   max_length=77, return_tensors="np").input_ids.astype(np.int64)
    table = np.load(demo_bundle / "text_encoder" / "token_embeddings.npy")  # fed as inputs_embeds (textual inversion)
    last, pooled, normed = session(demo_bundle, "text_encoder").run(None, {"input_ids": ids, "inputs_embeds": table[ids]})
    encoder = torch_pipeline.text_encoder
    with torch.no_grad():
        ref = encoder(torch.from_numpy(ids), output_hidden_states=True)
        final_norm = encoder.text_model.final_layer_norm
        ref_normed = np.stack([final_norm(h).numpy() for h in ref.hidden_states[1:]], axis=1)
    np.testing.assert_allclose(last, ref.last_hidden_state.numpy(), atol=1e-5)
    np.testing.assert_allclose(pooled, ref.pooler_output.numpy(), atol=1e-5)
    # A1111's clip skip k takes hidden_states[-k] through the final LayerNorm: entry j is layer j + 1.
    assert normed.shape == (2, encoder.config.num_hidden_layers, 77, 32)
    np.testing.assert_allclose(normed, ref_normed, atol=1e-5)
    np.testing.assert_allclose(normed[:, -1], last, atol=1e-5)


def test_vae_matches_torch_at_odd_size(demo_bundle, torch_pipeline):
    import torch

    rng = np.random.default_rng(3)
    latents = rng.standard_normal((2, 4, 9, 17)).astype(np.float32)
    pixels = rng.uniform(-1, 1, (1, 3, 136, 72)).astype(np.float32)
    decoded = session(demo_bundle, "vae_decoder").run(None, {"latent_sample": latents})[0]
    params = session(demo_bundle, "vae_encoder").run(None, {"sample": pixels})[0]
    vae = torch_pipeline.vae
    with torch.no_grad():
        ref_decoded = vae.decode(torch.from_numpy(latents)).sample.numpy()
        ref_params = vae.encode(torch.from_numpy(pixels)).latent_dist.parameters.numpy()
    assert decoded.shape == (2, 3, 72, 136) and params.shape == (1, 8, 17, 9)
    assert np.abs(decoded - ref_decoded).max() <= 1e-4
    assert np.abs(params - ref_params).max() <= 1e-4


# --- atomic write -----------------------------------------------------------------------------------------


def copying_export(demo_bundle: Path, crash_on: str | None, crash):
    """Stands in for `_export`: copies the finished component from the demo bundle (so the half-written
    bundle looks real), then crashes after writing `crash_on`."""

    def fake_export(module, args, path: Path, inputs, outputs, *layout):
        path.parent.mkdir(parents=True, exist_ok=True)
        for part in (demo_bundle / path.parent.name).glob("model.onnx*"):  # the graph and its weights
            shutil.copyfile(part, path.parent / part.name)
        if path.parent.name == crash_on:
            crash()
        return {"inputs": inputs, "outputs": outputs}

    return fake_export


def _raise():
    raise RuntimeError("simulated crash while exporting the last component")


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "replacing"])
@pytest.mark.slow
def test_failed_export_leaves_no_bundle(demo_bundle, demo_diffusers_dir, tmp_path, monkeypatch, existing):
    import export.onnx_export as onnx_export

    out = tmp_path / "models" / "tiny"
    if existing:
        shutil.copytree(demo_bundle, out)
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
    monkeypatch.setattr(onnx_export, "_export", copying_export(demo_bundle, "vae_decoder", _raise))
    with pytest.raises(RuntimeError, match="simulated crash"):
        onnx_export.export_diffusers_folder(demo_diffusers_dir, out)
    if existing:  # the previous bundle is untouched
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
        assert (out / MANIFEST_NAME).read_bytes() == (demo_bundle / MANIFEST_NAME).read_bytes()
    else:
        assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == (["tiny"] if existing else [])  # no temp left over

    # The same export without the crash lands complete, in one piece.
    monkeypatch.setattr(onnx_export, "_export", copying_export(demo_bundle, None, _raise))
    onnx_export.export_diffusers_folder(demo_diffusers_dir, out)
    assert load_bundle(out).manifest.source_kind == "diffusers"
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]


KILLED_EXPORT = r"""
import os, shutil, sys
from pathlib import Path
import export.onnx_export as onnx_export

demo_bundle, source, out = map(Path, sys.argv[1:4])

def fake_export(module, args, path, inputs, outputs, *layout):
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(demo_bundle / path.parent.name / "model.onnx", path)
    if path.parent.name == "vae_decoder":
        os._exit(17)  # the process dies: no exception handler, no cleanup
    return {"inputs": inputs, "outputs": outputs}

onnx_export._export = fake_export
onnx_export.export_diffusers_folder(source, out)
"""


@pytest.mark.slow
def test_killed_export_leaves_no_bundle_at_the_destination(demo_bundle, demo_diffusers_dir, tmp_path):
    out = tmp_path / "models" / "tiny"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_EXPORT, str(demo_bundle), str(demo_diffusers_dir), str(out)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 17, proc.stderr[-4000:]
    assert not out.exists()
    leftovers = list(out.parent.iterdir())
    # What the dead process leaves is a hidden temp folder without a manifest, never the bundle's name.
    assert leftovers and all(p.name.startswith(".") for p in leftovers)
    assert not any((p / MANIFEST_NAME).exists() or is_bundle(p) for p in leftovers)
