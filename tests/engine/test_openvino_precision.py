"""engine/openvino_precision.py: the timestep-embedding path stays f32 under OpenVINO's bf16 hint.

The reference is NumPy in float64 on the same graph (a sinusoidal embedding as diffusers' `get_timestep_embedding`
computes it, then a linear layer); the bf16 result is compared with and without the marks, so the test fails if
the marks stop working (a new OpenVINO that drops or renames the attribute)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.bundle import load_bundle

ov = pytest.importorskip("openvino")

from engine.openvino_backend import OpenVinoBackend, cpu_supports_bf16  # noqa: E402
from engine.openvino_precision import keep_timestep_f32, timestep_path  # noqa: E402

needs_bf16 = pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU without native bf16")

HALF = 64
FREQ = np.exp(-np.log(10000.0) * np.arange(HALF) / HALF).astype(np.float32)
TIMESTEPS = np.array([999.0, 998.7, 500.3, 21.0], np.float32)


def embedding_model(one_timestep: bool = False):
    """timestep [B] → Unsqueeze → ·freq → [sin, cos] → MatMul(W): the shape of a UNet's time_proj + linear_1.
    `one_timestep`: a [1] timestep broadcast to the batch first (the exports with a scalar timestep)."""
    import openvino.opset13 as ops

    timestep = ops.parameter([1 if one_timestep else len(TIMESTEPS)], np.float32, name="timestep")
    batch = ops.broadcast(timestep, ops.constant(np.array([len(TIMESTEPS)], np.int64))) if one_timestep else timestep
    args = ops.multiply(ops.unsqueeze(batch, ops.constant(np.array([1], np.int64))), ops.constant(FREQ[None]))
    embedding = ops.concat([ops.sin(args), ops.cos(args)], axis=1)
    weight = np.random.default_rng(0).standard_normal((2 * HALF, 32)).astype(np.float32)
    linear = ops.matmul(embedding, ops.constant(weight), False, False)
    return ov.Model([linear], [timestep]), weight


def reference(timesteps: np.ndarray = TIMESTEPS) -> np.ndarray:
    args = timesteps.astype(np.float64)[:, None] * FREQ.astype(np.float64)[None]
    return np.concatenate([np.sin(args), np.cos(args)], axis=1) @ embedding_model()[1].astype(np.float64)


def run_bf16(model, timesteps: np.ndarray = TIMESTEPS) -> tuple[np.ndarray, dict[str, str]]:
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    out = compiled(timesteps)[0]
    precisions = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        precisions[op.get_friendly_name()] = (info["layerType"].astype(str), info["outputPrecisions"].astype(str))
    return out, precisions


def relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@needs_bf16
def test_timestep_path_in_f32_removes_the_bf16_error():
    expected = reference()
    plain, _ = run_bf16(embedding_model()[0])
    model = embedding_model()[0]
    assert keep_timestep_f32(model) > 0
    marked, precisions = run_bf16(model)
    # Unmarked, t·freq is stored in bf16 (999 → 1000): the high frequencies' sin/cos are wrong.
    assert relative_error(plain, expected) > 0.05
    # Marked, only the MatMul's bf16 inputs remain (8-bit mantissa: ≈2⁻⁹ relative per product, summed).
    assert relative_error(marked, expected) < 0.01
    math_nodes = {name: p for name, p in precisions.items() if p[0] in ("Math", "Subgraph", "Eltwise", "Reshape")}
    assert math_nodes and all(out == "f32" for _, out in math_nodes.values()), precisions


@needs_bf16
def test_one_timestep_broadcast_to_the_batch_stays_f32_too():
    one = TIMESTEPS[:1]
    expected = reference(np.repeat(one, len(TIMESTEPS)))
    plain, _ = run_bf16(embedding_model(one_timestep=True)[0], one)
    model = embedding_model(one_timestep=True)[0]
    keep_timestep_f32(model)
    marked, _ = run_bf16(model, one)
    assert relative_error(plain, expected) > 0.05
    assert relative_error(marked, expected) < 0.01


def test_marks_keep_the_path_constants_f32_in_an_f16_ir(tmp_path):
    model, _ = embedding_model()
    keep_timestep_f32(model)
    ov.save_model(model, str(tmp_path / "m.xml"), compress_to_fp16=True)
    saved = ov.Core().read_model(str(tmp_path / "m.xml"))
    constants = {tuple(c.get_output_shape(0)): c.get_output_element_type(0).get_type_name()
                 for c in saved.get_ops() if c.get_type_name() == "Constant"}
    assert constants[(1, HALF)] == "f32"  # freq: on the path
    assert constants[(2 * HALF, 32)] == "f16"  # the linear layer's weight: compressed as before
    np.testing.assert_array_equal(next(c.get_data() for c in saved.get_ops() if c.get_type_name() == "Constant"
                                       and tuple(c.get_output_shape(0)) == (1, HALF)), FREQ[None])


def test_path_stops_at_the_first_matmul_on_the_shapes_unet(shapes_bundle):
    model = ov.Core().read_model(str(shapes_bundle / "unet" / "model.onnx"))
    names = {n.get_friendly_name() for n in timestep_path(model)}
    assert any("time_proj/Sin" in n for n in names) and any("time_proj/Cos" in n for n in names)
    assert not any("time_embedding" in n for n in names)  # linear_1 on: bf16 like every other linear layer


@needs_bf16
def test_backend_compiles_the_shapes_unet_with_the_time_projection_in_f32(shapes_bundle):
    bundle = load_bundle(shapes_bundle)
    shapes = {"sample": (2, 4, 8, 8), "timestep": (2,), "encoder_hidden_states": (2, 77, bundle.manifest.text_hidden_size)}
    # f16_weights=False: compiled from the ONNX, nothing written into the shared bundle (the f16 IR's constants:
    # test_marks_keep_the_path_constants_f32_in_an_f16_ir).
    compiled = OpenVinoBackend(bundle, "bf16", threads=2, f16_weights=False).compiled("unet", shapes)
    time_proj = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        original = info["originalLayersNames"].astype(str)
        if "time_proj" in original and info["layerType"].astype(str) != "Const":
            time_proj[original] = info["outputPrecisions"].astype(str)
    for part in ("Unsqueeze", "Mul", "Sin", "Cos"):
        assert any(part in name and precision == "f32" for name, precision in time_proj.items()), time_proj
