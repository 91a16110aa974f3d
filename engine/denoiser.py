"""The UNet as a denoiser D(x, σ), and the classifier-free-guidance combination around it (A1111
k_diffusion/external.py: DiscreteEpsDDPMDenoiser; modules/sd_samplers_cfg_denoiser.py:
CFGDenoiser.forward)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.backend import ExecutionBackend
from engine.conditioning import ConditioningSchedule
from engine.refiner import RefinerSwitch
from engine.schedules import ModelSchedule
from engine.sdxl_conditioning import split_packed


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
        channels = specs["sample"].shape[1]
        self.in_channels = channels if isinstance(channels, int) else None
        # SDXL UNets also take the pooled text embedding and the time ids; they arrive packed behind each row's
        # context (engine/sdxl_conditioning.py).
        self.added_cond = "text_embeds" in specs and "time_ids" in specs
        if self.added_cond:
            self.context_width = specs["encoder_hidden_states"].shape[-1]
            self.pooled_width = specs["text_embeds"].shape[-1]
            self.added_dtypes = {k: specs[k].dtype for k in ("text_embeds", "time_ids")}

    def __call__(
        self, sample: np.ndarray, t: float, context: np.ndarray, image_cond: np.ndarray | None = None
    ) -> np.ndarray:
        # Inpainting (9-channel) and instruct-pix2pix (8-channel) UNets read image_cond beside x (A1111
        # modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward).
        if image_cond is not None:
            sample = np.concatenate([sample, image_cond.astype(sample.dtype, copy=False)], axis=1)
        if self.in_channels is not None and sample.shape[1] != self.in_channels:
            raise ValueError(f"the UNet takes {self.in_channels} input channels, got {sample.shape[1]}")
        n = sample.shape[0]
        # optimum's export takes one scalar timestep for the whole batch; ours takes one per sample.
        timestep = np.full((n,) if self.per_sample_timestep else (), t, dtype=self.timestep_dtype)
        inputs = {"sample": sample.astype(self.sample_dtype, copy=False), "timestep": timestep}
        if self.added_cond:
            parts = split_packed(context, self.context_width, self.pooled_width)
            context = np.ascontiguousarray(parts.pop("encoder_hidden_states"))
            inputs |= {k: np.ascontiguousarray(v, dtype=self.added_dtypes[k]) for k, v in parts.items()}
        inputs["encoder_hidden_states"] = context.astype(self.context_dtype, copy=False)
        out = self.backend.run("unet", inputs)
        return next(iter(out.values())).astype(np.float32, copy=False)


def _pad_tokens(embeddings: list[np.ndarray], length: int) -> np.ndarray:
    """Stack [T_i, D] embeddings, padding shorter ones by repeating their last token vector (A1111)."""
    rows = []
    for e in embeddings:
        if e.shape[0] < length:
            e = np.concatenate([e, np.repeat(e[-1:], length - e.shape[0], axis=0)])
        rows.append(e)
    return np.stack(rows)


def pad_cond_uncond(cond: np.ndarray, uncond: np.ndarray, mode: str,
                    empty: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """[B, T, D] cond and uncond brought to one token length so they share a UNet call (A1111
    modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.pad_cond_uncond, pad_cond_uncond_v0). "empty": the shorter
    gets whole copies of the empty prompt's [77, D] embedding; "v0": the uncond repeats its last vector or is
    truncated to the cond's length."""
    if mode == "v0":
        if uncond.shape[1] < cond.shape[1]:
            uncond = np.concatenate([uncond, np.repeat(uncond[:, -1:], cond.shape[1] - uncond.shape[1], axis=1)], 1)
        return cond, uncond[:, : cond.shape[1]]
    repeats = (cond.shape[1] - uncond.shape[1]) // empty.shape[0]

    def padded(x: np.ndarray, n: int) -> np.ndarray:
        return np.concatenate([x, np.broadcast_to(np.tile(empty, (n, 1)), (x.shape[0], n * empty.shape[0],
                                                                          empty.shape[1]))], axis=1)

    if repeats < 0:
        cond = padded(cond, -repeats)
    elif repeats > 0:
        uncond = padded(uncond, repeats)
    return cond, uncond


@dataclass(frozen=True)
class LatentMask:
    """Inpainting's latent blend (A1111 modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward): `nmask` (1
    = repaint) keeps the prediction, elsewhere `init_latent`."""

    init_latent: np.ndarray
    nmask: np.ndarray

    def blend(self, x: np.ndarray) -> np.ndarray:
        return (x * self.nmask + self.init_latent * (1.0 - self.nmask)).astype(np.float32)


class CFGDenoiser:
    """D(x, σ) with classifier-free guidance; one call is one step of A1111's step counter.

    `image_cond` goes beside x into inpainting/edit UNets; `latent_mask` blends the clean init latent into every
    prediction (k-diffusion samplers); `image_cfg_scale` ≠ 1 runs instruct-pix2pix's three-way guidance.
    `eps(x, t)` is the same guidance over ε for the timestep samplers (DDIM, PLMS, UniPC); `s_min_uncond` > 0
    skips the unconditional half below that σ on odd steps (NGMS, A1111 modules/sd_samplers_cfg_denoiser.py:
    CFGDenoiser.forward), and `skip_early_cond` > 0 while
    step / `total_steps` ≤ it (`total_steps`: the calls A1111 expects, doubled for second-order samplers).
    """

    def __init__(
        self,
        unet: UNet,
        schedule: ModelSchedule,
        conditioning: ConditioningSchedule,
        cfg_scale: float,
        prediction_type: str = "epsilon",
        should_stop: Callable[[], bool] | None = None,
        image_cond: np.ndarray | None = None,
        latent_mask: LatentMask | None = None,
        image_cfg_scale: float | None = None,
        s_min_uncond: float = 0.0,
        s_min_uncond_all: bool = False,
        skip_early_cond: float = 0.0,
        total_steps: int | None = None,
        pad_cond_uncond: str = "",
        empty_context: np.ndarray | None = None,
        refiner: RefinerSwitch | None = None,
        refiner_conditioning: Callable[[], ConditioningSchedule] | None = None,
    ):
        if skip_early_cond and not total_steps:
            raise ValueError("skip_early_cond needs the denoiser's total_steps")
        self.unet = unet
        self.schedule = schedule
        self.conditioning = conditioning
        self.cfg_scale = cfg_scale
        self.prediction_type = prediction_type
        self.should_stop = should_stop
        self.image_cond = image_cond
        self.latent_mask = latent_mask
        self.image_cfg_scale = image_cfg_scale
        self.s_min_uncond = s_min_uncond
        self.s_min_uncond_all = s_min_uncond_all
        self.skip_early_cond = skip_early_cond
        self.total_steps = total_steps
        # Options pad_cond_uncond ("empty", with the encoded empty prompt [77, D]) and pad_cond_uncond_v0 ("v0").
        if pad_cond_uncond == "empty" and empty_context is None:
            raise ValueError("pad_cond_uncond needs the empty prompt's embedding")
        self.pad_cond_uncond = pad_cond_uncond
        self.empty_context = empty_context
        # refiner_checkpoint: the refiner's UNet and conditioning (computed when it takes over) replace ours.
        self.refiner = refiner
        self.refiner_conditioning = refiner_conditioning
        # DDIM CFG++ scales the guidance and reads the unconditional prediction (A1111's attributes of that name).
        self.cfg_scale_multiplier = 1.0
        self.need_last_uncond = False
        self.last_uncond: np.ndarray | None = None
        self.step = 0
        self.ngms_applied = False  # some step skipped the uncond for s_min_uncond

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return self.schedule.alphas_cumprod

    def _model_x0(
        self, x: np.ndarray, sigma: float, context: np.ndarray, image_cond: np.ndarray | None = None
    ) -> np.ndarray:
        c_in = 1.0 / (sigma**2 + 1) ** 0.5
        t = float(self.schedule.sigma_to_t(sigma))
        out = self.unet((x * c_in).astype(np.float32), t, context, image_cond)
        if self.prediction_type == "v_prediction":
            c_skip = 1.0 / (sigma**2 + 1)
            c_out = -sigma / (sigma**2 + 1) ** 0.5
            return c_skip * x + c_out * out
        x0 = x - sigma * out
        if self.schedule.lcm_boundary:
            # LCM's boundary condition c_skip·x + c_out·x̂₀ at s = 10·t (A1111 modules/sd_samplers_lcm.py:
            # LCMCompVisDenoiser).
            s = 10.0 * t
            return (0.25 / (s**2 + 0.25)) * x + (s / (s**2 + 0.25) ** 0.5) * x0
        return x0

    def _model_eps(
        self, x: np.ndarray, t: float, context: np.ndarray, image_cond: np.ndarray | None = None
    ) -> np.ndarray:
        out = self.unet(x.astype(np.float32), t, context, image_cond)
        if self.prediction_type == "v_prediction":
            a = float(self.schedule.alphas_cumprod[int(t)])
            return a**0.5 * out + (1 - a) ** 0.5 * x
        return out

    def __call__(self, x: np.ndarray, sigma: float) -> np.ndarray:
        denoised = self._step(x, sigma, self._model_x0)
        if self.latent_mask is not None:
            denoised = self.latent_mask.blend(denoised)
        return denoised

    def eps(self, x: np.ndarray, t: float) -> np.ndarray:
        """Guided ε̂(x, t) for the timestep samplers (A1111 modules/sd_samplers_timesteps.py:
        CompVisTimestepsDenoiser): the UNet sees x unscaled at timestep t. A mask is
        applied to x before the call, with the clean init latent (as A1111's
        modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward does)."""
        if self.latent_mask is not None:
            x = self.latent_mask.blend(x)
        return self._step(x, t, self._model_eps)

    def eps_and_uncond(self, x: np.ndarray, t: float, cfg_scale_multiplier: float) -> tuple[np.ndarray, np.ndarray]:
        """(guided ε̂ with the scale × `cfg_scale_multiplier`, the unconditional ε̂) for DDIM CFG++ (A1111
        modules/sd_samplers_timesteps_impl.py: ddim_cfgpp)."""
        self.cfg_scale_multiplier = cfg_scale_multiplier
        self.need_last_uncond = True
        eps = self.eps(x, t)
        return eps, self.last_uncond

    def _step(self, x: np.ndarray, sigma: float, predict) -> np.ndarray:
        """One guided prediction; `sigma` is σ for x0 predictions and the timestep for ε (also in NGMS's test)."""
        if self.should_stop is not None and self.should_stop():
            raise Interrupted
        if self.refiner is not None and self.refiner.due(
            self.step, self.total_steps, sigma, self.schedule, predict == self._model_eps
        ):
            self.refiner.switched = True
            self.unet = self.refiner.pipeline.unet
            self.conditioning = self.refiner_conditioning()
        cond = self.conditioning.at(self.step)
        if self.image_cond is not None and self.image_cfg_scale is not None and self.image_cfg_scale != 1.0:
            denoised = self._edit_guided(x, sigma, cond, predict)
        else:
            skip_early = self.skip_early_cond != 0 and self.step / self.total_steps <= self.skip_early_cond
            ngms = not skip_early and (
                self.s_min_uncond > 0 and bool(self.step % 2 or self.s_min_uncond_all) and sigma < self.s_min_uncond
            )
            self.ngms_applied = self.ngms_applied or ngms  # A1111 writes the `NGMS` infotext entry only then
            denoised = self._guided(x, sigma, cond, predict, skip_early or ngms)
        self.step += 1
        return denoised

    def _guided(self, x: np.ndarray, sigma: float, cond, predict=None, skip_uncond: bool = False) -> np.ndarray:
        predict = self._model_x0 if predict is None else predict
        cfg_scale = 1.0 if skip_uncond else self.cfg_scale * self.cfg_scale_multiplier
        batch = x.shape[0]
        image_cond = self.image_cond
        repeats = [len(sub_prompts) for sub_prompts in cond.cond]
        cond_embeddings = [e for sub_prompts in cond.cond for e, _ in sub_prompts]
        cond_len = max(e.shape[0] for e in cond_embeddings)
        cond_context = _pad_tokens(cond_embeddings, cond_len)
        x_cond = np.repeat(x, repeats, axis=0)
        image_cond_rows = None if image_cond is None else np.repeat(image_cond, repeats, axis=0)
        single_prompt = all(r == 1 for r in repeats) and all(w == 1.0 for s in cond.cond for _, w in s)
        uncond_len = max(e.shape[0] for e in cond.uncond)
        uncond_context = _pad_tokens(list(cond.uncond), uncond_len)
        if self.pad_cond_uncond and cond_len != uncond_len:
            # Before the skip checks, as A1111 pads: a cond padded with empty chunks is what the cond half sees.
            cond_context, uncond_context = pad_cond_uncond(cond_context, uncond_context, self.pad_cond_uncond,
                                                           self.empty_context)
            cond_len, uncond_len = cond_context.shape[1], uncond_context.shape[1]
        if cfg_scale == 1.0 and single_prompt and not self.need_last_uncond:
            # U + 1·(C − U) = C: skip the unconditional half.
            return predict(x_cond, sigma, cond_context, image_cond_rows)
        if skip_uncond:
            # NGMS: no unconditional half; each image's first cond row stands in for it (A1111).
            out_cond = predict(x_cond, sigma, cond_context, image_cond_rows)
            out_uncond = out_cond[np.cumsum([0, *repeats[:-1]])]
        elif cond_len == uncond_len:
            out = predict(
                np.concatenate([x_cond, x]), sigma, np.concatenate([cond_context, uncond_context]),
                None if image_cond is None else np.concatenate([image_cond_rows, image_cond]),
            )
            out_cond, out_uncond = out[: len(x_cond)], out[len(x_cond) :]
        else:
            # Different token lengths run as separate UNet batches; nothing is padded (A1111 default).
            out_cond = predict(x_cond, sigma, cond_context, image_cond_rows)
            out_uncond = predict(x, sigma, uncond_context, image_cond)
        self.last_uncond = out_uncond
        denoised = out_uncond.copy()
        row = 0
        for i in range(batch):
            for _, weight in cond.cond[i]:
                denoised[i] += (out_cond[row] - out_uncond[i]) * (weight * cfg_scale)
                row += 1
        return denoised

    def _edit_guided(self, x: np.ndarray, sigma: float, cond, predict=None) -> np.ndarray:
        """instruct-pix2pix (A1111 modules/sd_samplers_cfg_denoiser.py: CFGDenoiser.forward): rows [text +
        image, no text + image, no text + no image] →
        D = O_u + cfg·(O_c − O_i) + image_cfg·(O_i − O_u). AND is not supported, as in A1111."""
        if any(len(sub_prompts) != 1 for sub_prompts in cond.cond):
            raise ValueError("AND is not supported with instruct-pix2pix models")
        cond_embeddings = [sub_prompts[0][0] for sub_prompts in cond.cond]
        uncond_embeddings = list(cond.uncond)
        length = max(e.shape[0] for e in cond_embeddings + uncond_embeddings)
        cond_context = _pad_tokens(cond_embeddings, length)
        uncond_context = _pad_tokens(uncond_embeddings, length)
        out = (self._model_x0 if predict is None else predict)(
            np.concatenate([x, x, x]), sigma, np.concatenate([cond_context, uncond_context, uncond_context]),
            np.concatenate([self.image_cond, self.image_cond, np.zeros_like(self.image_cond)]),
        )
        out_cond, out_img_cond, out_uncond = np.split(out, 3)
        return (out_uncond + self.cfg_scale * (out_cond - out_img_cond)
                + self.image_cfg_scale * (out_img_cond - out_uncond))
