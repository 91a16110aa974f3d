"""TensorRT optimisation profiles for the UNet, shaped by A1111 traffic, and the ONNX Runtime TensorRT EP options
that build one engine per profile.

A TensorRT engine only runs input shapes inside the min/max of the profile it was built with, and is fastest at
its `opt` shape. NVIDIA's A1111 extension (Stable-Diffusion-WebUI-TensorRT `datastructures.py`: `ProfileSettings`,
`model_helper.py`: `get_input_profile`) builds the UNet for ranges of image size, batch and 75-token prompt
chunks (the token axis is 77·k) and picks the engine whose opt shape is nearest the request (`ModelConfig
.is_compatible`); we do the same, one engine per profile (an execution context binds one profile and needs its own
activation memory, so several profiles in one engine buy nothing here). A request outside every profile runs on
the CUDA EP instead (engine/trt_runtime.py), never on an engine built at request time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.backend import TensorSpec

TOKENS_PER_CHUNK = 77  # 75 prompt tokens + BOS + EOS: A1111 sends the UNet 77·k context rows


@dataclass(frozen=True)
class ShapeRange:
    """min/opt/max of one input, as TensorRT's `IOptimizationProfile.set_shape` takes them."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"min/opt/max of different ranks: {self.min} {self.opt} {self.max}")
        if any(not lo <= o <= hi for lo, o, hi in zip(self.min, self.opt, self.max, strict=True)):
            raise ValueError(f"need min <= opt <= max on every axis: {self.min} {self.opt} {self.max}")

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True))

    @property
    def is_static(self) -> bool:
        return self.min == self.opt == self.max


@dataclass(frozen=True)
class UNetProfile:
    """One TensorRT optimisation profile of the UNet: a shape range per (dynamic) input."""

    name: str
    inputs: tuple[tuple[str, ShapeRange], ...]

    @property
    def ranges(self) -> dict[str, ShapeRange]:
        return dict(self.inputs)

    @property
    def is_static(self) -> bool:
        """Every input one shape: the only profiles CUDA graphs can capture."""
        return all(r.is_static for _, r in self.inputs)

    def pinned_at_opt(self) -> UNetProfile:
        """This profile reduced to its opt shape: a static engine, the kind CUDA graphs can replay."""
        return UNetProfile(f"{self.name}@opt", tuple((n, ShapeRange(r.opt, r.opt, r.opt)) for n, r in self.inputs))

    def contains(self, shapes: Mapping[str, Sequence[int]]) -> bool:
        return all(name in shapes and r.contains(shapes[name]) for name, r in self.inputs)

    def distance(self, shapes: Mapping[str, Sequence[int]]) -> float:
        """How far a request is from the shape the engine was tuned for: the sum over axes of |s − opt| / opt (the
        A1111 extension ranks compatible engines by the same kind of distance to opt)."""
        total = 0.0
        for name, r in self.inputs:
            for s, o in zip(shapes[name], r.opt, strict=True):
                total += abs(s - o) / max(o, 1)
        return total


@dataclass(frozen=True)
class ProfileSpec:
    """A profile in A1111's terms: image size in px, images per batch, 75-token prompt chunks (min, opt, max)."""

    name: str
    height: tuple[int, int, int]
    width: tuple[int, int, int]
    batch: tuple[int, int, int] = (1, 1, 4)
    chunks: tuple[int, int, int] = (1, 1, 3)


@dataclass(frozen=True)
class UNetSignature:
    """What a UNet's profile depends on besides the request: its channels, context width, and SDXL's extras."""

    in_channels: int
    context_dim: int
    per_sample_timestep: bool = True
    pooled_dim: int = 0  # SDXL text_embeds
    time_ids_dim: int = 0  # SDXL time_ids (6; the refiner 5)
    vae_scale_factor: int = 8

    @classmethod
    def from_specs(cls, specs: Sequence[TensorSpec], vae_scale_factor: int = 8) -> UNetSignature:
        """From the UNet session's inputs (`ExecutionBackend.input_specs("unet")`)."""
        by_name = {s.name: s for s in specs}

        def last(name: str) -> int:
            dim = by_name[name].shape[-1] if name in by_name else 0
            return dim if isinstance(dim, int) else 0

        channels = by_name["sample"].shape[1]
        return cls(in_channels=channels if isinstance(channels, int) else 4, context_dim=last("encoder_hidden_states"),
                   per_sample_timestep=len(by_name["timestep"].shape) == 1, pooled_dim=last("text_embeds"),
                   time_ids_dim=last("time_ids"), vae_scale_factor=vae_scale_factor)


def unet_profile(spec: ProfileSpec, unet: UNetSignature) -> UNetProfile:
    """The UNet input ranges of an A1111-shaped profile. Rows are images × 2 under CFG (cond and uncond in one
    call, A1111's batch_cond_uncond); the minimum is one row per image because A1111 runs the cond half alone on
    the steps `s_min_uncond` / `skip_early_cond` skip the uncond (modules/sd_samplers_cfg_denoiser.py)."""
    f = unet.vae_scale_factor
    rows = (spec.batch[0], 2 * spec.batch[1], 2 * spec.batch[2])
    tokens = tuple(TOKENS_PER_CHUNK * k for k in spec.chunks)
    h = tuple(px // f for px in spec.height)
    w = tuple(px // f for px in spec.width)

    def triple(*axes: tuple[int, int, int]) -> ShapeRange:
        return ShapeRange(*(tuple(a[i] for a in axes) for i in range(3)))

    fixed = lambda n: (n, n, n)  # noqa: E731
    inputs = [("sample", triple(rows, fixed(unet.in_channels), h, w))]
    if unet.per_sample_timestep:  # optimum's scalar timestep has no dynamic axis, so no range
        inputs.append(("timestep", triple(rows)))
    inputs.append(("encoder_hidden_states", triple(rows, tokens, fixed(unet.context_dim))))
    if unet.pooled_dim:
        inputs.append(("text_embeds", triple(rows, fixed(unet.pooled_dim))))
    if unet.time_ids_dim:
        inputs.append(("time_ids", triple(rows, fixed(unet.time_ids_dim))))
    return UNetProfile(spec.name, tuple(inputs))


def a1111_profile_specs(architecture: str = "sd1", batch_max: int = 4) -> list[ProfileSpec]:
    """The default set: static 512/768/1024 px squares (the sizes A1111 clients send most; fastest) and one
    dynamic 256–1024 px range (opt 512) for everything else, hires second passes included; batch 1–4 images, 1–3
    prompt chunks (75–225 tokens, opt 75). SDXL (trained at 1024): static 768/1024 and a 512–1536 range, opt
    1024. Sizes are multiples of 8 px, as A1111 allows."""
    b = (1, 1, batch_max)
    sdxl = architecture.startswith("sdxl")
    statics = (768, 1024) if sdxl else (512, 768, 1024)
    lo, opt, hi = (512, 1024, 1536) if sdxl else (256, 512, 1024)
    specs = [ProfileSpec(f"static-{px}", (px, px, px), (px, px, px), b) for px in statics]
    specs.append(ProfileSpec(f"dynamic-{lo}-{hi}", (lo, opt, hi), (lo, opt, hi), b))
    return specs


def a1111_profiles(unet: UNetSignature, architecture: str = "sd1", batch_max: int = 4) -> list[UNetProfile]:
    return [unet_profile(s, unet) for s in a1111_profile_specs(architecture, batch_max)]


def select_profile(profiles: Sequence[UNetProfile], shapes: Mapping[str, Sequence[int]]) -> UNetProfile | None:
    """The profile a UNet call with these input shapes runs in: among those containing it, a static image size
    first (its engine is tuned for exactly that size), then the nearest opt shape; None when none contains it."""
    fitting = [p for p in profiles if p.contains(shapes)]
    if not fitting:
        return None

    def rank(p: UNetProfile) -> tuple[int, float]:
        sample = p.ranges["sample"]
        static_size = sample.min[2:] == sample.max[2:]
        return (0 if static_size else 1, p.distance(shapes))

    return min(fitting, key=rank)


def shape_string(shapes: Mapping[str, Sequence[int]]) -> str:
    """ORT TensorRT EP's explicit-profile format: `name:d0xd1x...` joined by commas (a scalar input: `name:`)."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims)}" for name, dims in shapes.items())


@dataclass(frozen=True)
class TrtBuildOptions:
    """How engines are built: fp16 (A1111's extension and the TRT demo build the UNet in fp16), the workspace
    TensorRT may use for tactics, CUDA graphs (only for fully static profiles)."""

    fp16: bool = True
    max_workspace_bytes: int | None = None  # None: TensorRT's default (the device's memory)
    cuda_graph: bool = False
    builder_optimization_level: int | None = None  # TensorRT's default (3) when None


def _flag(value: bool) -> str:
    return "True" if value else "False"


def trt_provider_options(profile: UNetProfile, engine_cache_dir: str, timing_cache_dir: str | None = None,
                         build: TrtBuildOptions = TrtBuildOptions()) -> dict[str, str]:
    """ONNX Runtime TensorRT EP options (onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html,
    "Execution Provider Options") that build `profile` into an engine cached in `engine_cache_dir`. Explicit
    min/opt/max shapes for every dynamic input: without them the EP rebuilds the engine whenever a larger shape
    arrives (engines.md: ORT's SD tooling, engine_builder_ort_trt.py, does the same)."""
    ranges = profile.ranges
    options = {
        "trt_fp16_enable": _flag(build.fp16),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": engine_cache_dir,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": timing_cache_dir or engine_cache_dir,
        "trt_dump_subgraphs": "False",
        "trt_profile_min_shapes": shape_string({n: r.min for n, r in ranges.items()}),
        "trt_profile_opt_shapes": shape_string({n: r.opt for n, r in ranges.items()}),
        "trt_profile_max_shapes": shape_string({n: r.max for n, r in ranges.items()}),
    }
    if build.max_workspace_bytes is not None:
        options["trt_max_workspace_size"] = str(int(build.max_workspace_bytes))
    if build.builder_optimization_level is not None:
        options["trt_builder_optimization_level"] = str(build.builder_optimization_level)
    if build.cuda_graph:
        if not profile.is_static:
            raise ValueError(f"profile {profile.name}: CUDA graphs need one shape per input (a static profile)")
        options["trt_cuda_graph_enable"] = "True"
    return options
