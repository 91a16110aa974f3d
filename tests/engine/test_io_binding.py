"""IO binding: the same numbers as session.run() (bit for bit on the CPU), and the host↔device copies per step."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

from engine.backend import OrtBackend
from engine.bundle import load_bundle
from engine.io_binding import IoBindingBackend
from engine.pipeline import Pipeline
from engine.trt_cache import has_nvidia_gpu
from tests.engine.test_engine_smoke import make_plan


@pytest.fixture(scope="module")
def bundle(demo_bundle):
    return load_bundle(demo_bundle)


@pytest.fixture(scope="module")
def sessions(bundle):
    """One set of CPU sessions for the module: run() and the bound runs share them (bindings are per backend)."""
    return OrtBackend(bundle, "cpu")


@pytest.fixture
def pipelines(bundle, sessions):
    def make(**kwargs):
        bound_backend = IoBindingBackend(sessions, device="cpu", **kwargs)
        return Pipeline(bundle, sessions), Pipeline(bundle, bound_backend), bound_backend

    return make


def assert_bound_is_plain(bundle, bound: IoBindingBackend, plain_sessions, steps: int) -> None:
    """`steps` Euler steps of one 64 px image through `bound` give plain run()'s latents on `plain_sessions`, bit for
    bit (also for other test files' bundles: tests/engine/test_gpu_paths_sdxl.py)."""
    plain = Pipeline(bundle, plain_sessions)
    plan = make_plan(plain, width=64, height=64, steps=steps)
    np.testing.assert_array_equal(Pipeline(bundle, bound).txt2img(plan).latents[0], plain.txt2img(plan).latents[0])


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DPM++ 2S a"])
def test_bit_identical_to_run_on_cpu(pipelines, sampler):
    # DPM++ 2M keeps the previous output: a result aliasing the reused output buffer would change it.
    plain, bound, _ = pipelines()
    plan = make_plan(plain, width=64, height=64, steps=5, sampler=sampler, batch_size=2, seeds=(3, 4))
    a, b = plain.txt2img(plan), bound.txt2img(plan)
    for x, y in zip(a.latents, b.latents, strict=True):
        np.testing.assert_array_equal(x, y)
    assert [np.asarray(i).tobytes() for i in a.images] == [np.asarray(i).tobytes() for i in b.images]


def test_copies_per_step(pipelines):
    plain, bound, backend = pipelines()
    steps = 6
    plan = make_plan(plain, width=64, height=64, steps=steps, sampler="Euler")
    bound.txt2img(plan)
    c = backend.counter
    # Euler: one UNet call per step. Per call: the latent and the timestep go in, ε comes out; the conditioning
    # (one prompt, no schedule) is copied on the first step only and stays on the device after.
    assert c.runs == steps
    assert c.d2h_copies == steps
    assert c.h2d_copies == 2 * steps + 1
    assert c.kept_on_device == steps - 1
    rows, context = 2, 77 * 32 * 4  # CFG pair; the demo's context width is 32 floats
    sample_bytes = rows * 4 * 8 * 8 * 4
    assert c.h2d_bytes == steps * (sample_bytes + rows * 4) + rows * context
    assert c.d2h_bytes == steps * sample_bytes
    # what session.run() would have copied in: every input on every call
    run_h2d = steps * (sample_bytes + rows * 4 + rows * context)
    assert c.h2d_bytes < run_h2d / 3


def test_prompt_schedule_recopies_only_on_change(pipelines):
    plain, bound, backend = pipelines()
    plan = make_plan(plain, width=64, height=64, steps=6, sampler="Euler")
    plan = dataclasses.replace(plan, prompts=("a [red:blue:3] circle",))
    a, b = plain.txt2img(plan), bound.txt2img(plan)
    np.testing.assert_array_equal(a.latents[0], b.latents[0])
    # the context changes once (at step 3): copied twice in all, kept 4 times
    assert backend.counter.kept_on_device == 4


def test_shapes_get_their_own_buffers(pipelines):
    plain, bound, backend = pipelines(max_shapes=1)
    for size in (64, 72, 64):
        plan = make_plan(plain, width=size, height=size, steps=2)
        np.testing.assert_array_equal(plain.txt2img(plan).latents[0], bound.txt2img(plan).latents[0])
    assert len(backend._bound) == 1


def test_other_components_and_attributes_pass_through(sessions):
    backend = IoBindingBackend(sessions, device="cpu")
    assert backend.output_names("vae_decoder") == sessions.output_names("vae_decoder")
    feed = {"input_ids": np.zeros((1, 77), dtype=np.int64)}
    shapes = {spec.name: spec.shape for spec in backend.input_specs("text_encoder")}
    if "inputs_embeds" in shapes:  # bundles exported for textual inversion take the token rows too
        feed["inputs_embeds"] = np.zeros((1, 77, shapes["inputs_embeds"][-1]), dtype=np.float32)
    backend.run("text_encoder", feed)
    assert backend.counter.runs == 0


def _cuda_ready() -> bool:
    return has_nvidia_gpu() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_io_binding_matches_cpu(bundle, cuda_graph):
    if not _cuda_ready():
        pytest.skip("needs an NVIDIA GPU and onnxruntime-gpu with CUDAExecutionProvider")
    providers = [("CUDAExecutionProvider", {"enable_cuda_graph": "1"} if cuda_graph else {})]
    gpu_backend = IoBindingBackend(OrtBackend(bundle, providers), device="cuda", cuda_graph=cuda_graph)
    assert gpu_backend.providers[0] == "CUDAExecutionProvider"
    cpu = Pipeline(bundle, OrtBackend(bundle, "cpu"))
    plan = make_plan(cpu, width=64, height=64, steps=4)
    np.testing.assert_allclose(Pipeline(bundle, gpu_backend).txt2img(plan).latents[0], cpu.txt2img(plan).latents[0],
                               atol=1e-2)
    assert gpu_backend.counter.kept_on_device == 3


def test_auto_device_follows_the_session(bundle, sessions):
    # "cuda" asked, CPU given (no GPU here, or onnxruntime-gpu without a usable one): run() as without binding
    if has_nvidia_gpu():
        pytest.skip("a GPU is present: the CPU fallback cannot be observed")
    backend = IoBindingBackend(OrtBackend(bundle, "cuda"))
    assert_bound_is_plain(bundle, backend, sessions, steps=2)
    assert backend.counter.runs == 0 and not backend._bound  # plain run(): no device to keep anything on


def test_optimum_bundle_scalar_timestep(optimum_bundle):
    # optimum's UNet takes one scalar timestep: a 0-d input buffer
    bundle = load_bundle(optimum_bundle)
    cpu = OrtBackend(bundle, "cpu")
    backend = IoBindingBackend(cpu, device="cpu")
    assert_bound_is_plain(bundle, backend, cpu, steps=3)
    assert backend.counter.runs == 3 and backend.counter.kept_on_device == 2
