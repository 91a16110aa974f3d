"""The GPU paths' CPU-checkable parts on a (tiny) SDXL UNet: its extra inputs in the profiles, and IO binding
with text_embeds/time_ids kept on the device."""

from __future__ import annotations

import pytest

from engine.backend import OrtBackend
from engine.bundle import load_bundle
from engine.io_binding import IoBindingBackend
from engine.trt_profiles import UNetSignature, a1111_profiles, select_profile
from tests.engine.test_io_binding import assert_bound_is_plain
from tests.engine.test_sdxl_parity import sdxl_bundle, sdxl_torch  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


def test_sdxl_signature_and_profiles(sdxl_bundle):  # noqa: F811
    cpu = OrtBackend(load_bundle(sdxl_bundle), "cpu")
    sig = UNetSignature.from_specs(cpu.input_specs("unet"))
    specs = {s.name: s.shape for s in cpu.input_specs("unet")}
    assert sig.pooled_dim == specs["text_embeds"][-1] and sig.time_ids_dim == 6
    assert sig.context_dim == specs["encoder_hidden_states"][-1]
    profiles = a1111_profiles(sig, "sdxl")
    rows = 2
    shapes = {"sample": (rows, 4, 128, 128), "timestep": (rows,), "encoder_hidden_states": (rows, 77, sig.context_dim),
              "text_embeds": (rows, sig.pooled_dim), "time_ids": (rows, 6)}
    assert select_profile(profiles, shapes).name == "static-1024"
    assert select_profile(profiles, {k: v for k, v in shapes.items() if k != "time_ids"}) is None


def test_sdxl_io_binding_bit_identical(sdxl_bundle):  # noqa: F811
    bundle = load_bundle(sdxl_bundle)
    cpu = OrtBackend(bundle, "cpu")
    backend = IoBindingBackend(cpu, device="cpu")
    assert_bound_is_plain(bundle, backend, cpu, steps=3)
    # context, text_embeds and time_ids copied on the first call only
    assert backend.counter.runs == 3 and backend.counter.kept_on_device == 2 * 3
