"""What a switch to a LoRA set rebuilds, and that the fast merge (stored layout, memory-mapped base, float32 factors)
gives the plain formula's weights: W + Σ m·scale·(up @ down), computed here from the factors and the base weight
read the slow way."""

from __future__ import annotations

import numpy as np
import pytest

from engine.lora import LoraMap, NetworkUse, load_network, merged_weights
from engine.network_sessions import ModelNetworks
from engine.safetensors_file import write_file


def _lora(lora_map: LoraMap, keys: list[str], seed: int, dtype=np.float32, rank: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = {}
    for key in keys:
        shape = lora_map.targets[key].shape
        kernel = shape[2:]
        tensors[f"{key}.lora_down.weight"] = (rng.standard_normal((rank, shape[1], *kernel)) * 0.3).astype(dtype)
        tensors[f"{key}.lora_up.weight"] = (rng.standard_normal((shape[0], rank, *((1, 1) if kernel else ())))
                                            * 0.3).astype(dtype)
        tensors[f"{key}.alpha"] = np.asarray(3.0, dtype=dtype)
    return tensors


@pytest.fixture(scope="module")
def demo_files(demo_bundle, tmp_path_factory):
    lora_map = LoraMap.load(demo_bundle)
    unet_keys = [k for k, t in lora_map.targets.items() if t.component == "unet" and not k.endswith(".bias")]
    te_keys = [k for k, t in lora_map.targets.items() if t.component == "text_encoder" and not k.endswith(".bias")]
    assert {lora_map.targets[k].layout for k in unet_keys} == {"N", "T"}  # both stored layouts are covered
    folder = tmp_path_factory.mktemp("switch")
    write_file(folder / "unet.safetensors", _lora(lora_map, unet_keys, 1))
    write_file(folder / "half.safetensors", _lora(lora_map, unet_keys + te_keys, 2, dtype=np.float16))
    return lora_map, folder


def _reference(bundle, lora_map, networks) -> dict[str, np.ndarray]:
    """Per initializer: base (np.fromfile, torch layout) + Σ m·(alpha/rank)·(up @ down) in float64, stored layout."""
    totals: dict[str, np.ndarray] = {}
    for tensors, m in networks:
        for name in tensors:
            if not name.endswith(".lora_down.weight"):
                continue
            key = name[: -len(".lora_down.weight")]
            target = lora_map.targets[key]
            down = tensors[name].astype(np.float64).reshape(tensors[name].shape[0], -1)
            up = tensors[f"{key}.lora_up.weight"].astype(np.float64).reshape(target.shape[0], -1)
            scale = float(tensors[f"{key}.alpha"].reshape(-1)[0]) / down.shape[0]
            delta = (up @ down).reshape(target.shape) * scale * m
            totals[key] = totals.get(key, 0) + delta
    out = {}
    for key, delta in totals.items():
        target = lora_map.targets[key]
        merged = target.read(bundle).astype(np.float64) + delta
        out[target.initializer] = merged.T if target.layout == "T" else merged
    return out


def test_fast_merge_equals_the_formula_for_both_layouts_and_fp16_factors(demo_bundle, demo_files):
    from engine.safetensors_file import load_file

    lora_map, folder = demo_files
    files = [("unet.safetensors", 0.7), ("half.safetensors", -0.4)]
    networks = [(load_network(folder / f), NetworkUse(f, m, m)) for f, m in files]
    merged, reports = merged_weights(demo_bundle, lora_map, networks)
    expected = _reference(demo_bundle, lora_map, [(load_file(folder / f)[0], m) for f, m in files])
    ours = {**merged["unet"], **merged["text_encoder"]}
    assert set(ours) == set(expected)
    for name, value in ours.items():
        assert value.dtype == np.float32 and value.flags.c_contiguous
        assert value.shape == expected[name].shape, name
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_switch_rebuilds_only_the_components_whose_weights_change(demo_pipeline, demo_files):
    _, folder = demo_files
    networks = ModelNetworks(demo_pipeline)
    half = load_network(folder / "half.safetensors")
    unet_only = load_network(folder / "unet.safetensors")
    assert set(networks.pipeline_for([(unet_only, NetworkUse("u"), "u")])[0].backend.sessions) == {"unet"}
    assert set(networks.pipeline_for([(half, NetworkUse("h", 0.0, 1.0), "h")])[0].backend.sessions) == {"unet"}
    te, _ = networks.pipeline_for([(half, NetworkUse("h", 1.0, 0.0), "h")])
    assert set(te.backend.sessions) == {"text_encoder"}
    both, _ = networks.pipeline_for([(half, NetworkUse("h", 1.0, 1.0), "h")])
    assert set(both.backend.sessions) == {"unet", "text_encoder"}


def test_the_tiled_unet_of_a_lora_set_uses_the_merged_weights(demo_pipeline, demo_files):
    """`unet:circular` (tiling) under a LoRA set is built from the set's merged weights (not the base's): it moves
    away from the base circular UNet as much as the plain LoRA UNet moves away from the base UNet."""
    _, folder = demo_files
    networks = ModelNetworks(demo_pipeline)
    lora, _ = networks.pipeline_for([(load_network(folder / "unet.safetensors"), NetworkUse("u"), "u")])
    rng = np.random.default_rng(0)
    specs = {s.name: s for s in demo_pipeline.backend.input_specs("unet")}
    feeds = {"sample": rng.standard_normal((1, 4, 32, 32)).astype(np.float32),
             "timestep": np.full((1,), 500, dtype=specs["timestep"].dtype),
             "encoder_hidden_states": rng.standard_normal((1, 77, int(specs["encoder_hidden_states"].shape[-1])))
             .astype(np.float32)}
    plain = lora.backend.run("unet", feeds)["out_sample"]
    tiled = lora.backend.run("unet:circular", feeds)["out_sample"]
    assert "unet:circular" in lora.backend.sessions
    base_plain = demo_pipeline.backend.run("unet", feeds)["out_sample"]
    base_tiled = demo_pipeline.backend.run("unet:circular", feeds)["out_sample"]
    assert np.abs(tiled - plain).max() > 1e-3  # circular padding
    moved, moved_plain = np.abs(tiled - base_tiled).mean(), np.abs(plain - base_plain).mean()
    assert moved_plain > 1e-2 and 0.5 < moved / moved_plain < 2


def test_a_backend_that_cannot_take_merged_weights_says_so(demo_pipeline, demo_files):
    """A backend without `session_with_initializers` (compiled weights only): a LoRA is refused with the reason, not
    a re-export hint. (OpenVINO takes merged weights: tests/engine/test_openvino_lora.py.)"""
    import copy

    from engine.lora import NetworkError

    _, folder = demo_files
    pipeline = copy.copy(demo_pipeline)
    pipeline.backend = type("CompiledOnly", (), {"component_bytes": lambda self, c: 0})()
    networks = ModelNetworks(pipeline)
    with pytest.raises(NetworkError, match="--backend ort"):
        networks.pipeline_for([(load_network(folder / "unet.safetensors"), NetworkUse("u"), "u")])
    assert networks.pipeline_for([])[0] is pipeline  # no LoRA: the model as it is
