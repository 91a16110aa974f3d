"""OpenVINO's intermediate buffers (engine/openvino_backend.py): the chunked attention compiled whole, and the
buffers of large compiled models released between components and after a job, with unchanged outputs.

The bundle is a copy of the shapes bundle whose score budget (export/attention_chunking.py) is small enough that
the chunked Loop runs at these small sizes, as it does at 1024 px with the exported budget.
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine.backend import OrtBackend, release_memory
from engine.bundle import load_bundle
from export.attention_chunking import set_budget

ov = pytest.importorskip("openvino")

from engine.openvino_backend import OpenVinoBackend  # noqa: E402

SMALL_BUDGET = 64 * 1024  # several query chunks for the UNet at 128 px and the VAE's mid-block at 256 px


@pytest.fixture(scope="module")
def chunky(shapes_bundle, tmp_path_factory):
    """The shapes bundle by symlinks, with UNet and VAE decoder graphs re-budgeted to SMALL_BUDGET."""
    copy = tmp_path_factory.mktemp("chunky") / "bundle"
    copy.mkdir()
    for item in shapes_bundle.iterdir():
        if item.name.startswith("."):
            continue
        if item.name not in ("unet", "vae_decoder"):
            (copy / item.name).symlink_to(item)
            continue
        (copy / item.name).mkdir()
        for file in item.iterdir():
            if file.name != "model.onnx":  # copied: OpenVINO refuses external data linked from elsewhere
                shutil.copyfile(file, copy / item.name / file.name)
        model = onnx.load(str(item / "model.onnx"), load_external_data=False)
        assert set_budget(model, SMALL_BUDGET) > 0
        onnx.save(model, str(copy / item.name / "model.onnx"))
    return load_bundle(copy)


def feeds(bundle, component: str, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(size)
    lat = size // 8
    if component == "unet":
        return {"sample": rng.standard_normal((2, 4, lat, lat), dtype=np.float32),
                "timestep": np.array([700.0, 35.0], np.float32),
                "encoder_hidden_states": rng.standard_normal((2, 77, bundle.manifest.text_hidden_size),
                                                             dtype=np.float32)}
    return {"latent_sample": rng.standard_normal((1, 4, lat, lat), dtype=np.float32)}


SIZES = {"unet": 128, "vae_decoder": 256}


def layers(backend: OpenVinoBackend, component: str) -> set[str]:
    (compiled,) = backend._compiled[component].values()
    return {op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()}


@pytest.mark.parametrize("component", ["unet", "vae_decoder"])
def test_whole_attention_is_bit_identical_to_the_chunked_loop(chunky, shapes_bundle, component):
    inputs = feeds(chunky, component, SIZES[component])
    chunked = OpenVinoBackend(chunky, "fp32", threads=2, whole_attention=False)
    whole = OpenVinoBackend(chunky, "fp32", threads=2)
    looped = chunked.run(component, inputs)
    got = whole.run(component, inputs)
    assert "TensorIterator" in layers(chunked, component)  # the Loop path really ran
    assert not layers(whole, component) & {"TensorIterator", "Loop", "If"}
    for name, expected in looped.items():
        np.testing.assert_array_equal(got[name], expected)
    reference = OrtBackend(load_bundle(shapes_bundle), "cpu", intra_op_threads=2).run(component, inputs)
    for name, expected in reference.items():
        np.testing.assert_allclose(got[name], expected, atol=2e-4, rtol=1e-4)


def test_released_buffers_leave_the_following_calls_bit_identical(chunky):
    backend = OpenVinoBackend(chunky, "fp32", threads=2, release_above=0)  # every size counts as large here
    unet, vae = feeds(chunky, "unet", SIZES["unet"]), feeds(chunky, "vae_decoder", SIZES["vae_decoder"])
    u1 = backend.run("unet", unet)["out_sample"]
    assert backend.releases == 0
    v1 = backend.run("vae_decoder", vae)["sample"]
    assert backend.releases == 1  # the UNet's, on the switch
    np.testing.assert_array_equal(backend.run("unet", unet)["out_sample"], u1)
    assert backend.releases == 2  # the decoder's
    release_memory()  # after a job: every registered backend's large buffers (here the UNet's)
    assert backend.releases == 3
    np.testing.assert_array_equal(backend.run("vae_decoder", vae)["sample"], v1)
    np.testing.assert_array_equal(backend.run("unet", unet)["out_sample"], u1)
    assert backend.compiles == 2  # released buffers, not dropped models


def test_small_sizes_and_looped_graphs_keep_their_buffers(chunky):
    small = OpenVinoBackend(chunky, "fp32", threads=2)  # default threshold: above 512×512 px
    looped = OpenVinoBackend(chunky, "fp32", threads=2, whole_attention=False, release_above=0)
    for backend in (small, looped):
        for component in ("unet", "vae_decoder", "unet"):
            backend.run(component, feeds(chunky, component, SIZES[component]))
        assert backend.release_buffers() == 0
        assert backend.releases == 0


def rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status")
def test_release_gives_the_decoders_buffers_back(chunky):
    # The shapes VAE decoder at 512 px holds ≈ 48 MiB of intermediate buffers after a call (its largest
    # activations: 64 × 512² floats = 64 MiB, reused); the release must return most of them to the OS.
    backend = OpenVinoBackend(chunky, "fp32", threads=2, release_above=0)
    backend.run("vae_decoder", feeds(chunky, "vae_decoder", 512))
    before = rss_anon_mib()
    assert backend.release_buffers() == 1
    assert before - rss_anon_mib() > 32


def test_releases_from_another_thread_leave_running_calls_alone(chunky):
    # A job's end (release_memory) on one worker while another worker's UNet runs: OpenVINO refuses to release a
    # model that is running (caught, left alone); between calls the buffers go and the next call reallocates.
    backend = OpenVinoBackend(chunky, "fp32", threads=1, release_above=0)
    unet = feeds(chunky, "unet", SIZES["unet"])
    expected = backend.run("unet", unet)["out_sample"]
    outputs: list[np.ndarray] = []
    done = threading.Event()

    def calls() -> None:
        try:
            for _ in range(6):
                outputs.append(backend.run("unet", unet)["out_sample"])
        finally:
            done.set()

    worker = threading.Thread(target=calls)
    worker.start()
    while not done.is_set():
        backend.release_buffers()
    worker.join()
    assert len(outputs) == 6
    for out in outputs:
        np.testing.assert_array_equal(out, expected)
    assert backend.releases > 0


@pytest.mark.fullsize
def test_at_1024px_the_exported_budget_gives_the_same_outputs_whole_and_after_releases(shapes_bundle):
    """The sizes of issue 16 with the bundle as exported (64 MiB budget: the Loop runs in UNet and VAE at 1024 px)."""
    bundle = load_bundle(shapes_bundle)
    unet, vae = feeds(bundle, "unet", 1024), feeds(bundle, "vae_decoder", 1024)
    chunked = OpenVinoBackend(bundle, "fp32", threads=2, whole_attention=False)
    expected = {"unet": chunked.run("unet", unet)["out_sample"], "vae_decoder": chunked.run("vae_decoder", vae)["sample"]}
    assert "TensorIterator" in layers(chunked, "unet") and "TensorIterator" in layers(chunked, "vae_decoder")
    del chunked
    whole = OpenVinoBackend(bundle, "fp32", threads=2)  # default threshold: 1024 px is large
    for _ in range(2):
        np.testing.assert_array_equal(whole.run("unet", unet)["out_sample"], expected["unet"])
        np.testing.assert_array_equal(whole.run("vae_decoder", vae)["sample"], expected["vae_decoder"])
    assert whole.releases == 3  # UNet, decoder, UNet
