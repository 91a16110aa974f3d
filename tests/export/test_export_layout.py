"""Bundle layout on disk (export/onnx_layout.py): each component is `model.onnx` + one `model.onnx_data`, large
tensors 64 KiB-aligned for ORT's mmap; the same numbers as a self-contained export; a missing or truncated data
file refused by name; bundles of the earlier layouts (self-contained, torch's file per tensor) still load."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from engine.backend import OrtBackend
from engine.bundle import MANIFEST_NAME, BundleFilesError, load_bundle
from export.onnx_layout import ALIGN_THRESHOLD, PAGE_ALIGNMENT, relayout, save_component

COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
SELF_CONTAINED = 2**62  # threshold no model reaches: every component one model.onnx


def feeds(component: str) -> dict[str, np.ndarray]:
    """Fixed inputs for each component of the demo model (odd sizes, batch 2)."""
    rng = np.random.default_rng(3)
    if component == "text_encoder":
        ids = rng.integers(0, 49406, (2, 77), dtype=np.int64)
        ids[:, 0], ids[:, 9:] = 49406, 49407
        return {"input_ids": ids, "inputs_embeds": rng.standard_normal((2, 77, 32), dtype=np.float32)}
    if component == "unet":
        return {"sample": rng.standard_normal((2, 4, 9, 7), dtype=np.float32),
                "timestep": np.array([981.0, 20.0], np.float32),
                "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32)}
    if component == "vae_encoder":
        return {"sample": rng.uniform(-1, 1, (2, 3, 72, 56)).astype(np.float32)}
    return {"latent_sample": rng.standard_normal((2, 4, 9, 7), dtype=np.float32)}


def run(model_path: Path, component: str) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds(component))


@functools.cache
def run_bundle(bundle: Path) -> dict[str, list[np.ndarray]]:
    """Every component through the engine's own loader and backend."""
    backend = OrtBackend(load_bundle(bundle), "cpu")
    return {c: list(backend.run(c, feeds(c)).values()) for c in COMPONENTS}


def tensor_files(folder: Path) -> set[str]:
    """Everything in a component folder except the diffusers config optimum's layout puts there and the text
    encoder's token table (export/text_inputs_embeds.py)."""
    return {p.name for p in folder.iterdir() if p.name not in ("config.json", "token_embeddings.npy")}


@pytest.fixture(scope="module")
def self_contained_bundle(demo_diffusers_dir, tmp_path_factory) -> Path:
    """The demo model exported once more, with the threshold keeping every component in one model.onnx."""
    import torch
    from diffusers import StableDiffusionPipeline

    from export.onnx_export import export_pipeline

    pipe = StableDiffusionPipeline.from_pretrained(demo_diffusers_dir, torch_dtype=torch.float32,
                                                   safety_checker=None, requires_safety_checker=False)
    out = tmp_path_factory.mktemp("layout") / "self-contained"
    return export_pipeline(pipe, out, name="sdedge-tiny", external_data_threshold=SELF_CONTAINED)


# --- the layout -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_is_one_graph_and_one_aligned_data_file(demo_bundle, component):
    folder = demo_bundle / component
    # Nothing else: no per-tensor files, no hidden temp folder of the trace or the save.
    assert tensor_files(folder) == {"model.onnx", "model.onnx_data"}
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    external = [t for t in model.graph.initializer if uses_external_data(t)]
    infos = sorted((ExternalDataInfo(t) for t in external), key=lambda i: i.offset)
    assert infos and {i.location for i in infos} == {"model.onnx_data"}
    data_size = (folder / "model.onnx_data").stat().st_size
    for info, following in zip(infos, [*infos[1:], None], strict=True):
        assert info.offset % (PAGE_ALIGNMENT if info.length >= ALIGN_THRESHOLD else 64) == 0
        assert info.offset + info.length <= (following.offset if following else data_size)  # no overlap
    assert infos[-1].offset + infos[-1].length == data_size
    # The weights are in the data file: what stays inline (shape constants, tiny biases) is a few KiB.
    inline = sum(len(t.raw_data) for t in model.graph.initializer if not uses_external_data(t))
    assert inline < 0.01 * data_size
    manifest = json.loads((demo_bundle / MANIFEST_NAME).read_text())
    assert manifest["io"][component]["external_data"] == {"model.onnx_data": data_size}


@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.slow
def test_external_data_export_gives_the_self_contained_numbers(demo_bundle, self_contained_bundle, component):
    assert tensor_files(self_contained_bundle / component) == {"model.onnx"}
    manifest = json.loads((self_contained_bundle / MANIFEST_NAME).read_text())
    assert manifest["io"][component]["external_data"] == {}
    whole = run(self_contained_bundle / component / "model.onnx", component)
    split = run(demo_bundle / component / "model.onnx", component)
    assert len(whole) == len(split)
    for a, b in zip(whole, split, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)  # bit-exact


@pytest.mark.slow
def test_torch_file_per_tensor_output_becomes_one_data_file(demo_bundle, tmp_path):
    """What torch.onnx.export writes for a model over 2 GiB (one file per tensor) re-saved by relayout."""
    model = onnx.load(str(demo_bundle / "unet" / "model.onnx"))
    torch_like = tmp_path / "traced" / "model.onnx"
    torch_like.parent.mkdir()
    onnx.save(model, str(torch_like), save_as_external_data=True, all_tensors_to_one_file=False)
    assert len(list(torch_like.parent.iterdir())) > 50
    files = relayout(torch_like, tmp_path / "unet" / "model.onnx")
    assert {p.name for p in (tmp_path / "unet").iterdir()} == {"model.onnx", "model.onnx_data"}
    assert files.data_bytes == (tmp_path / "unet" / "model.onnx_data").stat().st_size
    for a, b in zip(run(torch_like, "unet"), run(tmp_path / "unet" / "model.onnx", "unet"), strict=True):
        assert np.array_equal(a, b)


def test_resaving_over_an_existing_component_does_not_append(demo_bundle, tmp_path):
    """onnx appends to an existing data file; save_component must write a fresh one each time."""
    target = tmp_path / "model.onnx"
    model = onnx.load(str(demo_bundle / "vae_decoder" / "model.onnx"))
    first = save_component(onnx.ModelProto.FromString(model.SerializeToString()), target)
    second = save_component(onnx.ModelProto.FromString(model.SerializeToString()), target)
    assert first == second and (tmp_path / "model.onnx_data").stat().st_size == first.data_bytes
    assert {p.name for p in tmp_path.iterdir()} == {"model.onnx", "model.onnx_data"}
    # Saved self-contained over it: the stale data file goes.
    save_component(model, target, external_threshold=SELF_CONTAINED)
    assert {p.name for p in tmp_path.iterdir()} == {"model.onnx"}


# --- loading ----------------------------------------------------------------------------------------------


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_or_truncated_data_file_is_refused_by_name(demo_bundle, tmp_path, damage):
    bundle = copy_bundle(demo_bundle, tmp_path / "bundle")
    data = bundle / "unet" / "model.onnx_data"
    size = data.stat().st_size
    if damage == "missing":
        data.unlink()
    else:
        with open(data, "r+b") as f:
            f.truncate(size - 4096)
    with pytest.raises(BundleFilesError) as err:
        load_bundle(bundle)
    assert str(data) in str(err.value)
    assert ("missing" if damage == "missing" else f"{size - 4096} bytes, the manifest says {size}: truncated") \
        in str(err.value)


@pytest.mark.parametrize("layout", ["self-contained", "file-per-tensor"])
@pytest.mark.slow
def test_bundles_of_the_earlier_layouts_still_load(demo_bundle, tmp_path, layout):
    """Before this layout, bundles were one model.onnx per component (under 2 GiB) or torch's file per tensor,
    and their manifests had no `external_data`: the engine loads them and computes the same numbers."""
    bundle = copy_bundle(demo_bundle, tmp_path / "old")
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    for component in COMPONENTS:
        model_path = bundle / component / "model.onnx"
        model = onnx.load(str(model_path))
        (bundle / component / "model.onnx_data").unlink()
        onnx.save(model, str(model_path), save_as_external_data=layout == "file-per-tensor",
                  all_tensors_to_one_file=False)
        del manifest["io"][component]["external_data"]
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert len(list((bundle / "unet").iterdir())) > (50 if layout == "file-per-tensor" else 1)
    old, new = run_bundle(bundle), run_bundle(demo_bundle)
    for component in COMPONENTS:
        for a, b in zip(old[component], new[component], strict=True):
            assert np.array_equal(a, b)


# --- over 2 GiB -------------------------------------------------------------------------------------------


@pytest.mark.fullsize
def test_component_over_2_gib_is_saved_in_one_data_file_and_runs(tmp_path):
    """One MatMul whose weight alone is over protobuf's 2 GiB limit: saved as model.onnx + one model.onnx_data,
    mapped and run by ORT. W[k, n] = (7k + n) mod 13 − 6, so one-hot rows of x pick rows of W exactly."""
    from onnx import TensorProto, helper

    k, n = 16384, 32769  # 2 147 549 184 bytes of float32 > 2**31
    weight = np.empty((k, n), np.float32)
    for start in range(0, k, 512):  # in blocks: the int64 intermediates of the whole matrix would be 4 GiB each
        rows = np.arange(start, min(start + 512, k))
        weight[rows] = (rows[:, None] * 7 + np.arange(n)) % 13 - 6
    raw = weight.tobytes()
    del weight
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    # Added in place: protobuf copies a message through serialisation (extend, CopyFrom), impossible over 2 GiB.
    tensor = model.graph.initializer.add()
    tensor.name, tensor.data_type, tensor.raw_data = "w", TensorProto.FLOAT, raw
    tensor.dims.extend([k, n])
    del raw, tensor
    files = save_component(model, tmp_path / "model.onnx")
    del model
    assert {p.name for p in tmp_path.iterdir()} == {"model.onnx", "model.onnx_data"}
    assert files.data_bytes == (tmp_path / "model.onnx_data").stat().st_size == k * n * 4
    assert (tmp_path / "model.onnx").stat().st_size < 4096

    rows = np.array([0, 1, 12345, k - 1])
    x = np.zeros((len(rows), k), np.float32)
    x[np.arange(len(rows)), rows] = 1.0
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    expected = ((rows[:, None] * 7 + np.arange(n)) % 13 - 6).astype(np.float32)
    assert np.array_equal(y, expected)


@pytest.mark.fullsize
def test_torch_export_over_2_gib_lands_as_one_data_file(tmp_path, monkeypatch):
    """The exporter's own path for a component over 2 GiB: torch.onnx.export writes a file per tensor, the
    component ends as model.onnx + model.onnx_data with nothing else beside it, and runs: y = x Wᵀ + b."""
    import torch

    import export.onnx_layout as onnx_layout
    from export.onnx_export import _export

    traced: list[set[str]] = []
    real_relayout = onnx_layout.relayout

    def spying_relayout(src, dst, threshold):
        traced.append({p.name for p in Path(src).parent.iterdir()})
        return real_relayout(src, dst, threshold)

    monkeypatch.setattr(onnx_layout, "relayout", spying_relayout)

    k, n = 32769, 16384  # nn.Linear's weight [n, k]: 2 147 549 184 bytes of float32 > 2**31
    layer = torch.nn.Linear(k, n)
    with torch.no_grad():
        layer.weight.copy_(((torch.arange(n)[:, None] * 7 + torch.arange(k)) % 13 - 6).float())
        layer.bias.copy_(torch.arange(n, dtype=torch.float32) % 5)
    path = tmp_path / "big" / "model.onnx"
    io = _export(layer, (torch.zeros(2, k),), path, {"x": {0: "batch"}}, {"y": {0: "batch"}}, 0)
    del layer
    assert len(traced) == 1 and {"model.onnx", "weight", "bias"} <= traced[0]  # torch's file per tensor
    assert {p.name for p in path.parent.iterdir()} == {"model.onnx", "model.onnx_data"}
    assert io["external_data"] == {"model.onnx_data": (path.parent / "model.onnx_data").stat().st_size}
    assert io["external_data"]["model.onnx_data"] >= k * n * 4

    cols = np.array([0, 3, 20000, k - 1])
    x = np.zeros((len(cols), k), np.float32)
    x[np.arange(len(cols)), cols] = 1.0
    (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    expected = ((np.arange(n)[None, :] * 7 + cols[:, None]) % 13 - 6) + np.arange(n) % 5
    assert np.array_equal(y, expected.astype(np.float32))
