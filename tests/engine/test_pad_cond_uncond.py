"""Options pad_cond_uncond / pad_cond_uncond_v0 (A1111 modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward):
cond and uncond of different token lengths share one UNet call only when an option pads them."""

from __future__ import annotations

import numpy as np
import pytest

from engine.backend import TensorSpec
from engine.conditioning import ConstantConditioning, StepConditioning
from engine.denoiser import CFGDenoiser, UNet
from engine.schedules import ModelSchedule, scaled_linear_alphas_cumprod

D = 4


class RecordingUNetBackend:
    """A UNet whose ε is the mean of the context over tokens (so padding changes it), recording each call."""

    def __init__(self):
        self.contexts: list[np.ndarray] = []

    def input_specs(self, component):
        return [TensorSpec("sample", (None, 4, None, None), "float32"), TensorSpec("timestep", (None,), "float32"),
                TensorSpec("encoder_hidden_states", (None, None, D), "float32")]

    def output_names(self, component):
        return ["out_sample"]

    def run(self, component, inputs):
        context = inputs["encoder_hidden_states"]
        self.contexts.append(context.copy())
        eps = np.broadcast_to(context.mean(axis=(1, 2))[:, None, None, None], inputs["sample"].shape)
        return {"out_sample": np.ascontiguousarray(eps, dtype=np.float32)}


def embedding(chunks: int, value: float) -> np.ndarray:
    return np.full((77 * chunks, D), value, np.float32) + np.arange(77 * chunks, dtype=np.float32)[:, None] / 1000


EMPTY = np.full((77, D), -1.0, np.float32)


def denoiser(backend, cond_chunks: int, uncond_chunks: int, mode: str, cfg: float = 7.0) -> CFGDenoiser:
    conditioning = ConstantConditioning(StepConditioning(((( embedding(cond_chunks, 1.0), 1.0),),),
                                                         (embedding(uncond_chunks, 2.0),)))
    schedule = ModelSchedule(scaled_linear_alphas_cumprod(0.00085, 0.012, 1000))
    return CFGDenoiser(UNet(backend), schedule, conditioning, cfg, pad_cond_uncond=mode,
                       empty_context=EMPTY if mode == "empty" else None)


X = np.zeros((1, 4, 2, 2), np.float32)


def test_default_runs_two_calls_unpadded():
    backend = RecordingUNetBackend()
    denoiser(backend, 2, 1, "")(X, 5.0)
    assert [c.shape for c in backend.contexts] == [(1, 154, D), (1, 77, D)]


@pytest.mark.parametrize(("cond_chunks", "uncond_chunks"), [(2, 1), (1, 3)])
def test_empty_pads_the_shorter_with_empty_prompt_chunks(cond_chunks, uncond_chunks):
    backend = RecordingUNetBackend()
    denoiser(backend, cond_chunks, uncond_chunks, "empty")(X, 5.0)
    (context,) = backend.contexts  # one batched call
    n = max(cond_chunks, uncond_chunks) * 77
    cond = np.concatenate([embedding(cond_chunks, 1.0)] + [EMPTY] * (max(cond_chunks, uncond_chunks) - cond_chunks))
    uncond = np.concatenate([embedding(uncond_chunks, 2.0)] + [EMPTY] * (n // 77 - uncond_chunks))
    np.testing.assert_array_equal(context, np.stack([cond, uncond]))


def test_v0_repeats_the_last_uncond_vector_or_truncates():
    backend = RecordingUNetBackend()
    denoiser(backend, 2, 1, "v0")(X, 5.0)
    uncond = embedding(1, 2.0)
    expected = np.concatenate([uncond, np.repeat(uncond[-1:], 77, axis=0)])
    np.testing.assert_array_equal(backend.contexts[0][1], expected)
    backend = RecordingUNetBackend()
    denoiser(backend, 1, 2, "v0")(X, 5.0)
    np.testing.assert_array_equal(backend.contexts[0][1], embedding(2, 2.0)[:77])


def test_padding_at_cfg_1_is_what_the_cond_half_sees():
    """cfg 1 skips the uncond half, but a cond padded by the option is still the padded one (A1111 pads first)."""
    backend = RecordingUNetBackend()
    denoiser(backend, 1, 2, "empty", cfg=1.0)(X, 5.0)
    (context,) = backend.contexts
    np.testing.assert_array_equal(context[0], np.concatenate([embedding(1, 1.0), EMPTY]))


def test_job_options_map_to_the_sampler_setting():
    from service.a1111.job_options import JobOptions

    assert JobOptions.from_mapping({}).sampler_settings().pad_cond_uncond == ""
    assert JobOptions.from_mapping({"pad_cond_uncond": True}).sampler_settings().pad_cond_uncond == "empty"
    both = {"pad_cond_uncond": True, "pad_cond_uncond_v0": True}
    assert JobOptions.from_mapping(both).sampler_settings().pad_cond_uncond == "v0"
