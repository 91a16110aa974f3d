"""`.pt`/`.ckpt` LoRAs (torch.save in the test) merge exactly as the same LoRA saved as `.safetensors`."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine.lora import LoraMap, NetworkError, NetworkUse, load_network, merged_weights
from engine.safetensors_file import write_file
from tests.engine.test_lora import TE_LINEAR, UNET_CONV, UNET_CONV3, UNET_LINEAR, kohya_lora

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("suffix,dtype,wrap", [(".pt", torch.float32, False), (".ckpt", torch.float16, True),
                                               (".pt", torch.bfloat16, False)])
def test_torch_saved_lora_merges_like_the_safetensors_one(tmp_path, demo_bundle, torch_pipeline, suffix, dtype,
                                                          wrap):
    tensors = kohya_lora(torch_pipeline, 1)
    as_torch = {k: torch.from_numpy(v).to(dtype) for k, v in tensors.items()}
    pt = tmp_path / f"net{suffix}"
    torch.save({"state_dict": as_torch} if wrap else as_torch, pt)
    # The reference: the same values (rounded to the dtype by torch) written as .safetensors in float32.
    st = tmp_path / "net.safetensors"
    write_file(st, {k: v.float().numpy() for k, v in as_torch.items()})
    lora_map = LoraMap.load(demo_bundle)
    use = NetworkUse("net", 0.8, 0.6)
    ours, report = merged_weights(demo_bundle, lora_map, [(load_network(pt), use)])
    reference, _ = merged_weights(demo_bundle, lora_map, [(load_network(st), use)])
    assert report["net"].applied_modules == len(UNET_LINEAR + UNET_CONV + UNET_CONV3 + TE_LINEAR)
    assert ours.keys() == reference.keys()
    for component in reference:
        assert ours[component].keys() == reference[component].keys()
        for name, weight in reference[component].items():
            np.testing.assert_array_equal(ours[component][name], weight)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/lora-should-not-exist",))


def test_a_malicious_pt_lora_is_an_error_and_never_runs(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"lora_unet_x.alpha": torch.tensor(1.0), "x": _Evil()}, path)
    with pytest.raises(NetworkError, match="refused global"):
        load_network(path)
    assert not os.path.exists("/tmp/lora-should-not-exist")
