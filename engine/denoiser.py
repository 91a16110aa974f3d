"""The UNet as a denoiser D(x, σ), and the classifier-free-guidance combination around it (a1111-sampling.md §2.3, §3)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.backend import ExecutionBackend
from engine.conditioning import ConditioningSchedule
from engine.schedules import ModelSchedule


class Interrupted(Exception):
    """Raised inside the loop when the job is interrupted or skipped; the pipeline keeps the last latent."""


class UNet:
    """Calls the UNet component: ε (or v) = UNet(sample, t, encoder_hidden_states)."""

    def __init__(self, backend: ExecutionBackend):
        self.backend = backend
        specs = {s.name: s for s in backend.input_specs("unet")}
        self.per_sample_timestep = len(specs["timestep"].shape) == 1
        self.sample_dtype = specs["sample"].dtype
        self.timestep_dtype = specs["timestep"].dtype
        self.context_dtype = specs["encoder_hidden_states"].dtype

    def __call__(self, sample: np.ndarray, t: float, context: np.ndarray) -> np.ndarray:
        n = sample.shape[0]
        # optimum's export takes one scalar timestep for the whole batch; ours takes one per sample.
        timestep = np.full((n,) if self.per_sample_timestep else (), t, dtype=self.timestep_dtype)
        out = self.backend.run(
            "unet",
            {
                "sample": sample.astype(self.sample_dtype, copy=False),
                "timestep": timestep,
                "encoder_hidden_states": context.astype(self.context_dtype, copy=False),
            },
        )
        return next(iter(out.values())).astype(np.float32, copy=False)


def _pad_tokens(embeddings: list[np.ndarray], length: int) -> np.ndarray:
    """Stack [T_i, D] embeddings, padding shorter ones by repeating their last token vector (A1111)."""
    rows = []
    for e in embeddings:
        if e.shape[0] < length:
            e = np.concatenate([e, np.repeat(e[-1:], length - e.shape[0], axis=0)])
        rows.append(e)
    return np.stack(rows)


class CFGDenoiser:
    """D(x, σ) with classifier-free guidance; one call is one step of A1111's step counter."""

    def __init__(
        self,
        unet: UNet,
        schedule: ModelSchedule,
        conditioning: ConditioningSchedule,
        cfg_scale: float,
        prediction_type: str = "epsilon",
        should_stop: Callable[[], bool] | None = None,
    ):
        self.unet = unet
        self.schedule = schedule
        self.conditioning = conditioning
        self.cfg_scale = cfg_scale
        self.prediction_type = prediction_type
        self.should_stop = should_stop
        self.step = 0

    def _model_x0(self, x: np.ndarray, sigma: float, context: np.ndarray) -> np.ndarray:
        c_in = 1.0 / (sigma**2 + 1) ** 0.5
        t = float(self.schedule.sigma_to_t(sigma))
        out = self.unet((x * c_in).astype(np.float32), t, context)
        if self.prediction_type == "v_prediction":
            c_skip = 1.0 / (sigma**2 + 1)
            c_out = -sigma / (sigma**2 + 1) ** 0.5
            return c_skip * x + c_out * out
        return x - sigma * out

    def __call__(self, x: np.ndarray, sigma: float) -> np.ndarray:
        if self.should_stop is not None and self.should_stop():
            raise Interrupted
        cond = self.conditioning.at(self.step)
        batch = x.shape[0]
        repeats = [len(sub_prompts) for sub_prompts in cond.cond]
        cond_embeddings = [e for sub_prompts in cond.cond for e, _ in sub_prompts]
        cond_len = max(e.shape[0] for e in cond_embeddings)
        cond_context = _pad_tokens(cond_embeddings, cond_len)
        x_cond = np.repeat(x, repeats, axis=0)
        single_prompt = all(r == 1 for r in repeats) and all(w == 1.0 for s in cond.cond for _, w in s)
        if self.cfg_scale == 1.0 and single_prompt:
            # U + 1·(C − U) = C: skip the unconditional half.
            denoised = self._model_x0(x_cond, sigma, cond_context)
            self.step += 1
            return denoised
        uncond_len = max(e.shape[0] for e in cond.uncond)
        uncond_context = _pad_tokens(list(cond.uncond), uncond_len)
        if cond_len == uncond_len:
            out = self._model_x0(
                np.concatenate([x_cond, x]), sigma, np.concatenate([cond_context, uncond_context])
            )
            out_cond, out_uncond = out[: len(x_cond)], out[len(x_cond) :]
        else:
            # Different token lengths run as separate UNet batches; nothing is padded (A1111 default).
            out_cond = self._model_x0(x_cond, sigma, cond_context)
            out_uncond = self._model_x0(x, sigma, uncond_context)
        denoised = out_uncond.copy()
        row = 0
        for i in range(batch):
            for _, weight in cond.cond[i]:
                denoised[i] += (out_cond[row] - out_uncond[i]) * (weight * self.cfg_scale)
                row += 1
        self.step += 1
        return denoised
