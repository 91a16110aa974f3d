"""Each network type's ΔW against an independent torch evaluation: the low-rank ones as the layers they stand for
(W·x + up(down(x))·scale, run as torch convolutions), the others from A1111's formulas written out in torch."""

from __future__ import annotations

import numpy as np
import pytest

from engine.lora import NetworkError, module_delta

torch = pytest.importorskip("torch")
F = torch.nn.functional


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def test_locon_3x3_equals_the_layers_it_stands_for():
    rng = np.random.default_rng(0)
    weight, down, up = rand(rng, 16, 8, 3, 3), rand(rng, 4, 8, 3, 3), rand(rng, 16, 4, 1, 1)
    parts = {"lora_down.weight": down, "lora_up.weight": up, "alpha": np.float32(2.0)}
    delta, bias = module_delta(parts, weight, multiplier=0.8)
    assert bias is None
    x = t(rand(rng, 2, 8, 10, 12))
    merged = F.conv2d(x, t(weight + delta), padding=1)
    layers = F.conv2d(x, t(weight), padding=1) + F.conv2d(F.conv2d(x, t(down), padding=1), t(up)) * (2.0 / 4) * 0.8
    torch.testing.assert_close(merged, layers, atol=2e-4, rtol=1e-4)


def test_lora_mid_tucker_equals_the_layers_it_stands_for():
    rng = np.random.default_rng(1)
    weight = rand(rng, 12, 6, 3, 3)
    down, mid, up = rand(rng, 3, 6, 1, 1), rand(rng, 3, 3, 3, 3), rand(rng, 12, 3, 1, 1)
    parts = {"lora_down.weight": down, "lora_mid.weight": mid, "lora_up.weight": up}
    delta, _ = module_delta(parts, weight, multiplier=1.0)  # no alpha: scale 1
    x = t(rand(rng, 1, 6, 9, 9))
    merged = F.conv2d(x, t(weight + delta), padding=1)
    layers = F.conv2d(x, t(weight), padding=1) + F.conv2d(F.conv2d(F.conv2d(x, t(down)), t(mid), padding=1), t(up))
    torch.testing.assert_close(merged, layers, atol=2e-4, rtol=1e-4)


def test_linear_lora_with_dyn_uses_the_first_rows():
    rng = np.random.default_rng(2)
    weight, down, up = rand(rng, 10, 7), rand(rng, 6, 7), rand(rng, 10, 6)
    parts = {"lora_down.weight": down, "lora_up.weight": up, "alpha": np.float32(3.0)}
    delta, _ = module_delta(parts, weight, multiplier=1.0, dyn=2)
    x = t(rand(rng, 5, 7))
    reference = F.linear(F.linear(x, t(down[:2])), t(up[:, :2])) * (3.0 / 6)  # DyLoRA: scale by the full rank
    torch.testing.assert_close(F.linear(x, t(delta)), reference, atol=1e-5, rtol=1e-5)


def test_loha_is_the_hadamard_product_of_two_low_rank_products():
    rng = np.random.default_rng(3)
    weight = rand(rng, 8, 5)
    w1a, w1b, w2a, w2b = rand(rng, 8, 2), rand(rng, 2, 5), rand(rng, 8, 2), rand(rng, 2, 5)
    parts = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "alpha": np.float32(1.0)}
    delta, _ = module_delta(parts, weight, multiplier=0.5)
    reference = (t(w1a) @ t(w1b)) * (t(w2a) @ t(w2b)) * (1.0 / 2) * 0.5
    torch.testing.assert_close(t(delta), reference, atol=1e-5, rtol=1e-5)


def test_loha_conv_with_cp_tensors():
    rng = np.random.default_rng(4)
    weight = rand(rng, 6, 4, 3, 3)
    t1, t2 = rand(rng, 2, 2, 3, 3), rand(rng, 2, 2, 3, 3)
    w1a, w1b, w2a, w2b = rand(rng, 2, 6), rand(rng, 2, 4), rand(rng, 2, 6), rand(rng, 2, 4)
    parts = {"hada_t1": t1, "hada_t2": t2, "hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b}
    delta, _ = module_delta(parts, weight, multiplier=1.0)

    def rebuild(tt, wa, wb):  # LyCORIS: ΔW[o, i, k, l] = Σ_{a,b} t[a, b, k, l]·wa[a, o]·wb[b, i]
        return torch.einsum("abkl,ao,bi->oikl", t(tt), t(wa), t(wb))

    torch.testing.assert_close(t(delta), rebuild(t1, w1a, w1b) * rebuild(t2, w2a, w2b), atol=1e-4, rtol=1e-4)


def test_lokr_is_a_kronecker_product():
    rng = np.random.default_rng(5)
    weight = rand(rng, 12, 6)
    w1, w2a, w2b = rand(rng, 3, 2), rand(rng, 4, 2), rand(rng, 2, 3)
    parts = {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": np.float32(1.0)}
    delta, _ = module_delta(parts, weight, multiplier=1.0)
    reference = torch.kron(t(w1), t(w2a) @ t(w2b)) * (1.0 / 2)
    torch.testing.assert_close(t(delta), reference, atol=1e-5, rtol=1e-5)
    # Both factors full: no rank, so scale 1 whatever alpha says.
    full, _ = module_delta({"lokr_w1": w1, "lokr_w2": rand(rng, 4, 3), "alpha": np.float32(8.0)}, weight, 1.0)
    assert np.abs(full).max() > 0


def test_lokr_conv_gets_trailing_kernel_axes():
    rng = np.random.default_rng(6)
    weight = rand(rng, 8, 4, 3, 3)
    w1, w2 = rand(rng, 2, 2), rand(rng, 4, 2, 3, 3)
    delta, _ = module_delta({"lokr_w1": w1, "lokr_w2": w2}, weight, multiplier=1.0)
    torch.testing.assert_close(t(delta), torch.kron(t(w1)[:, :, None, None], t(w2)), atol=1e-6, rtol=1e-6)


def test_dora_renormalises_per_input_channel():
    rng = np.random.default_rng(7)
    weight, down, up = rand(rng, 9, 5), rand(rng, 2, 5), rand(rng, 9, 2)
    dora_scale = np.abs(rand(rng, 1, 5)) + 0.5
    parts = {"lora_down.weight": down, "lora_up.weight": up, "alpha": np.float32(1.0), "dora_scale": dora_scale}
    delta, _ = module_delta(parts, weight, multiplier=0.7)
    merged = t(weight) + t(up) @ t(down) * 0.5
    norm = torch.linalg.vector_norm(merged, dim=0, keepdim=True)
    reference = (merged * (t(dora_scale) / norm) - t(weight)) * 0.7
    torch.testing.assert_close(t(delta), reference, atol=1e-5, rtol=1e-5)


def test_ia3_and_full():
    rng = np.random.default_rng(8)
    weight = rand(rng, 4, 3)
    w = rand(rng, 4)
    delta, _ = module_delta({"weight": w, "on_input": np.float32(0)}, weight, multiplier=1.0)
    torch.testing.assert_close(t(delta), t(weight) * t(w)[:, None])
    w_in = rand(rng, 3)
    delta, _ = module_delta({"weight": w_in, "on_input": np.float32(1)}, weight, multiplier=1.0)
    torch.testing.assert_close(t(delta), t(weight) * t(w_in)[None, :])
    diff, diff_b = rand(rng, 4, 3), rand(rng, 4)
    delta, bias = module_delta({"diff": diff, "diff_b": diff_b}, weight, multiplier=0.5)
    np.testing.assert_allclose(delta, diff * 0.5, rtol=1e-6)
    np.testing.assert_allclose(bias, diff_b * 0.5, rtol=1e-6)


@pytest.mark.parametrize("parts,kind", [
    ({"oft_blocks": np.zeros((2, 2, 2), np.float32)}, "OFT"),
    ({"w_norm": np.zeros(4, np.float32), "b_norm": np.zeros(4, np.float32)}, "NORM"),
    ({"a1.weight": np.zeros((2, 3)), "a2.weight": np.zeros((2, 2)), "b1.weight": np.zeros((2, 3)),
      "b2.weight": np.zeros((4, 2))}, "GLORA"),
])
def test_types_sdedge_does_not_merge_are_refused_by_name(parts, kind):
    with pytest.raises(NetworkError, match=kind):
        module_delta(parts, np.zeros((4, 3), np.float32), 1.0)


def test_unknown_keys_and_wrong_shapes_are_errors():
    with pytest.raises(NetworkError, match="unrecognised"):
        module_delta({"something": np.zeros(3)}, np.zeros((4, 3), np.float32), 1.0)
    parts = {"lora_down.weight": np.zeros((2, 5), np.float32), "lora_up.weight": np.zeros((4, 2), np.float32)}
    with pytest.raises(NetworkError, match="does not fit"):
        module_delta(parts, np.zeros((4, 3), np.float32), 1.0)


def test_conv_in_lora_on_an_inpainting_unet_is_zero_padded():
    rng = np.random.default_rng(9)
    weight, down, up = rand(rng, 8, 9, 3, 3), rand(rng, 2, 4, 3, 3), rand(rng, 8, 2, 1, 1)
    delta, _ = module_delta({"lora_down.weight": down, "lora_up.weight": up}, weight, 1.0)
    assert delta.shape == weight.shape
    assert not delta[:, 4:].any()
    torch.testing.assert_close(t(delta[:, :4]), torch.einsum("or,rikl->oikl", t(up[:, :, 0, 0]), t(down)))
