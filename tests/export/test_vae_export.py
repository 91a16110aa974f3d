"""export/vae_export.py: a VAE file (LDM or diffusers layout) → vae_encoder/vae_decoder ONNX, against diffusers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.vae_files import bundle_vae_config, random_vae, write_ldm_vae

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def config(demo_bundle):
    return bundle_vae_config(demo_bundle)


@pytest.fixture(scope="module")
def reference(config):
    torch.set_num_threads(1)
    return random_vae(config, seed=11)


def _decode_parity(folder, vae, rng):
    from engine.vae_override import open_exported_vae

    opened = open_exported_vae(folder)
    latents = rng.standard_normal((2, 4, 5, 7)).astype(np.float32)
    got = opened.backend.run("vae_decoder", {"latent_sample": latents})["sample"]
    with torch.no_grad():
        want = vae.decode(torch.from_numpy(latents)).sample.numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
    pixels = rng.uniform(-1, 1, (1, 3, 48, 40)).astype(np.float32)
    got = opened.backend.run("vae_encoder", {"sample": pixels})["latent_parameters"]
    with torch.no_grad():
        want = vae.encode(torch.from_numpy(pixels)).latent_dist.parameters.numpy()
    assert np.abs(got - want).max() <= 1e-4
    return opened


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_ldm_vae_file_exports_with_diffusers_numbers(tmp_path, config, reference, demo_bundle, suffix):
    from export.vae_export import config_digest, export_vae_file

    file = write_ldm_vae(reference, tmp_path / f"my-vae{suffix}")
    out = export_vae_file(file, config, tmp_path / "out", family="sd")
    opened = _decode_parity(out, reference, np.random.default_rng(0))
    assert opened.record["source_kind"] == "ldm"
    assert opened.record["family"] == "sd" and opened.record["config_digest"] == config_digest(config)
    assert opened.record["sha256"] == __import__("hashlib").sha256(file.read_bytes()).hexdigest()
    # The bundle's IO contract: the same input/output names and dynamic axes as the checkpoint's own VAE.
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    for component in ("vae_encoder", "vae_decoder"):
        assert opened.record["io"][component]["inputs"] == manifest["io"][component]["inputs"]
        assert opened.record["io"][component]["outputs"] == manifest["io"][component]["outputs"]
    assert not [p for p in (tmp_path).iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_diffusers_layout_file_exports_too(tmp_path, config, reference):
    from safetensors.torch import save_file

    from export.vae_export import export_vae_file

    file = tmp_path / "diffusers-vae.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(file))
    out = export_vae_file(file, config, tmp_path / "out", family="sd")
    assert _decode_parity(out, reference, np.random.default_rng(1)).record["source_kind"] == "diffusers"


def test_a_vae_of_another_architecture_is_refused_and_leaves_nothing(tmp_path, config):
    from export.vae_export import VaeFileError, export_vae_file

    wider = dict(config, block_out_channels=[32, 64, 64, 64])
    file = write_ldm_vae(random_vae(wider, seed=3), tmp_path / "other.safetensors")
    with pytest.raises(VaeFileError, match="do not fit"):
        export_vae_file(file, config, tmp_path / "out", family="sd")
    missing = tmp_path / "half.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(write_ldm_vae(random_vae(config, seed=4), tmp_path / "full.safetensors")))
    save_file({k: v for k, v in state.items() if not k.startswith("decoder.up.0.")}, str(missing))
    with pytest.raises(VaeFileError):
        export_vae_file(missing, config, tmp_path / "out", family="sd")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(VaeFileError, match="cannot read"):
        export_vae_file(garbage, config, tmp_path / "out", family="sd")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
