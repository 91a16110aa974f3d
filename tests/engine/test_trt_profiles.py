"""TensorRT profiles: the A1111-shaped set, which profile a UNet call lands in, and the TRT EP option strings."""

from __future__ import annotations

import pytest

from engine.backend import TensorSpec
from engine.trt_profiles import (
    ProfileSpec,
    ShapeRange,
    TrtBuildOptions,
    UNetSignature,
    a1111_profiles,
    select_profile,
    trt_provider_options,
    unet_profile,
)

SD15 = UNetSignature(in_channels=4, context_dim=768)
SDXL = UNetSignature(in_channels=4, context_dim=2048, pooled_dim=1280, time_ids_dim=6)


def call(images: int, height: int, width: int, tokens: int = 77, cfg: bool = True, unet: UNetSignature = SD15):
    """The input shapes of one UNet call for an A1111 request (rows = images × 2 with CFG)."""
    rows = images * (2 if cfg else 1)
    shapes = {"sample": (rows, unet.in_channels, height // 8, width // 8), "timestep": (rows,),
              "encoder_hidden_states": (rows, tokens, unet.context_dim)}
    if unet.pooled_dim:
        shapes |= {"text_embeds": (rows, unet.pooled_dim), "time_ids": (rows, unet.time_ids_dim)}
    return shapes


def names(profiles):
    return [p.name for p in profiles]


def test_a1111_set_sd15():
    profiles = a1111_profiles(SD15)
    assert names(profiles) == ["static-512", "static-768", "static-1024", "dynamic-256-1024"]
    static = profiles[0].ranges
    # batch 1–4 images × CFG, 75-token chunks 1–3 (77·k rows of context), 512 px = 64 latent rows.
    assert static["sample"] == ShapeRange((1, 4, 64, 64), (2, 4, 64, 64), (8, 4, 64, 64))
    assert static["timestep"] == ShapeRange((1,), (2,), (8,))
    assert static["encoder_hidden_states"] == ShapeRange((1, 77, 768), (2, 77, 768), (8, 231, 768))
    dynamic = profiles[-1].ranges["sample"]
    assert dynamic == ShapeRange((1, 4, 32, 32), (2, 4, 64, 64), (8, 4, 128, 128))


def test_a1111_set_sdxl_has_added_conditions():
    profiles = a1111_profiles(SDXL, "sdxl")
    assert names(profiles) == ["static-768", "static-1024", "dynamic-512-1536"]
    r = profiles[1].ranges
    assert r["text_embeds"] == ShapeRange((1, 1280), (2, 1280), (8, 1280))
    assert r["time_ids"] == ShapeRange((1, 6), (2, 6), (8, 6))
    assert r["sample"].opt == (2, 4, 128, 128)


@pytest.mark.parametrize("request_shape,expected", [
    ((1, 512, 512), "static-512"),  # exactly a static size: the static engine
    ((4, 768, 768), "static-768"),  # batch 4 × CFG = 8 rows: the edge of the range, inside
    ((1, 1024, 1024), "static-1024"),
    ((1, 512, 768), "dynamic-256-1024"),  # not square: only the dynamic range
    ((2, 256, 256), "dynamic-256-1024"),  # lower edge of the range
    ((1, 1024, 256), "dynamic-256-1024"),  # upper edge on one axis, lower on the other
    ((1, 520, 512), "dynamic-256-1024"),  # a multiple of 8 px, not of 64
])
def test_selection_inside_and_edges(request_shape, expected):
    assert select_profile(a1111_profiles(SD15), call(*request_shape)).name == expected


@pytest.mark.parametrize("request_shape", [
    (1, 1032, 512),  # one latent row above the range
    (1, 248, 512),  # one latent row below
    (5, 512, 512),  # 5 images × CFG = 10 rows > 8
    (1, 2048, 2048),  # hires at 2× of 1024
])
def test_selection_outside_every_profile(request_shape):
    assert select_profile(a1111_profiles(SD15), call(*request_shape)) is None


def test_selection_prompt_chunks():
    profiles = a1111_profiles(SD15)
    # 76–150 tokens = 2 chunks = 154 context rows; 225 tokens = 3 chunks; a 4th chunk is outside.
    assert select_profile(profiles, call(1, 512, 512, tokens=154)).name == "static-512"
    assert select_profile(profiles, call(1, 512, 512, tokens=231)).name == "static-512"
    assert select_profile(profiles, call(1, 512, 512, tokens=308)) is None


def test_selection_uncond_skipped_half_batch():
    # s_min_uncond / skip_early_cond: the cond half alone (one row per image) stays in the profile.
    assert select_profile(a1111_profiles(SD15), call(1, 512, 512, cfg=False)).name == "static-512"


def test_selection_nearest_opt_among_dynamic_profiles():
    near_small = unet_profile(ProfileSpec("a", (256, 384, 768), (256, 384, 768)), SD15)
    near_large = unet_profile(ProfileSpec("b", (256, 640, 768), (256, 640, 768)), SD15)
    assert select_profile([near_small, near_large], call(1, 448, 448)).name == "a"
    assert select_profile([near_small, near_large], call(1, 576, 576)).name == "b"


def test_selection_other_unet_width_never_matches():
    # An SD 2.x context (1024) is not an SD 1.x engine's input.
    assert select_profile(a1111_profiles(SD15), call(1, 512, 512, unet=UNetSignature(4, 1024))) is None


def test_signature_from_session_specs():
    specs = [TensorSpec("sample", ("batch", 9, "h", "w"), "float32"), TensorSpec("timestep", ("batch",), "float32"),
             TensorSpec("encoder_hidden_states", ("batch", "seq", 768), "float32")]
    assert UNetSignature.from_specs(specs) == UNetSignature(in_channels=9, context_dim=768)
    scalar_t = [specs[0], TensorSpec("timestep", (), "float32"), specs[2]]
    sig = UNetSignature.from_specs(scalar_t)
    assert not sig.per_sample_timestep
    # optimum's scalar timestep has no profile range
    assert "timestep" not in unet_profile(ProfileSpec("s", (512,) * 3, (512,) * 3), sig).ranges


def test_provider_options_exact_strings():
    profile = a1111_profiles(SD15)[0]
    options = trt_provider_options(profile, "/cache/e", "/cache/t",
                                   TrtBuildOptions(fp16=True, max_workspace_bytes=4 << 30))
    # ORT's documented format: "input1:dim1xdim2x...,input2:..." (one profile: each input named once).
    assert options == {
        "trt_fp16_enable": "True",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": "/cache/e",
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": "/cache/t",
        "trt_dump_subgraphs": "False",
        "trt_profile_min_shapes": "sample:1x4x64x64,timestep:1,encoder_hidden_states:1x77x768",
        "trt_profile_opt_shapes": "sample:2x4x64x64,timestep:2,encoder_hidden_states:2x77x768",
        "trt_profile_max_shapes": "sample:8x4x64x64,timestep:8,encoder_hidden_states:8x231x768",
        "trt_max_workspace_size": "4294967296",
    }


def test_provider_options_sdxl_and_cuda_graph():
    profile = a1111_profiles(SDXL, "sdxl")[1]
    options = trt_provider_options(profile, "/e")
    assert options["trt_profile_max_shapes"] == ("sample:8x4x128x128,timestep:8,encoder_hidden_states:8x231x2048,"
                                                 "text_embeds:8x1280,time_ids:8x6")
    assert options["trt_timing_cache_path"] == "/e"
    assert "trt_max_workspace_size" not in options
    with pytest.raises(ValueError, match="static profile"):
        trt_provider_options(profile, "/e", build=TrtBuildOptions(cuda_graph=True))
    one = unet_profile(ProfileSpec("one", (512,) * 3, (512,) * 3, batch=(1, 1, 1), chunks=(1, 1, 1)), SD15)
    # one image, one chunk: still 1 row at min (uncond skipped) and 2 at opt/max, so not static
    assert not one.is_static
    pinned = one.pinned_at_opt()
    assert pinned.is_static and pinned.ranges["sample"].min == (2, 4, 64, 64)
    options = trt_provider_options(pinned, "/e", build=TrtBuildOptions(cuda_graph=True))
    assert options["trt_cuda_graph_enable"] == "True"
    assert options["trt_profile_min_shapes"] == options["trt_profile_max_shapes"]


def test_shape_range_checks():
    with pytest.raises(ValueError):
        ShapeRange((2,), (1,), (3,))
    with pytest.raises(ValueError):
        ShapeRange((1, 2), (1,), (3,))
