"""engine/torch_pickle.py against files torch.save writes in the test (torch is the reference)."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.torch_pickle import TorchFileError, TorchModule, load  # noqa: E402


def _np(t) -> np.ndarray:
    return t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32])
def test_dtypes_match_torch(tmp_path, dtype, legacy):
    g = torch.Generator().manual_seed(3)
    t = (torch.randn(5, 7, generator=g) * 100).to(dtype)
    path = tmp_path / "t.pt"
    torch.save({"t": t, "scalar": t[1, 2].clone()}, path, _use_new_zipfile_serialization=not legacy)
    got = load(path)
    for key, want in (("t", _np(t)), ("scalar", _np(t[1, 2]))):
        assert isinstance(got[key], np.ndarray) and got[key].shape == want.shape, key
        assert got[key].dtype == (np.float32 if dtype == torch.bfloat16 else want.dtype)
        np.testing.assert_array_equal(got[key], want)


def test_views_offsets_and_strides_of_one_storage(tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    views = {"slice": base[2:5, 3:9], "transposed": base.t(), "step": base[::2, 1::3], "row": base[4],
             "scalar": base[1, 1], "empty": base[:0], "base": base}
    path = tmp_path / "v.pt"
    torch.save(views, path)
    got = load(path)
    for key, view in views.items():
        np.testing.assert_array_equal(got[key], view.numpy(), err_msg=key)
    got["slice"][0, 0] = -1  # copies: a write to one view does not show in another
    assert got["base"][2, 3] == 23


def test_nested_dicts_sizes_and_python_values(tmp_path):
    data = {"a": OrderedDict(b={"c": torch.ones(2, 3, dtype=torch.float16)}), "size": torch.Size([4, 5]),
            "n": 7, "x": 0.5, "s": "text", "none": None, "list": [1, torch.zeros(1)], "tuple": (1, 2),
            "set": {1, 2}, "bytes": b"\x00\xff"}
    path = tmp_path / "n.pt"
    torch.save(data, path)
    got = load(path)
    assert isinstance(got["a"], OrderedDict)
    np.testing.assert_array_equal(got["a"]["b"]["c"], np.ones((2, 3), np.float16))
    assert got["size"] == (4, 5)
    assert (got["n"], got["x"], got["s"], got["none"], got["tuple"], got["set"], got["bytes"]) == \
        (7, 0.5, "text", None, (1, 2), {1, 2}, b"\x00\xff")
    np.testing.assert_array_equal(got["list"][1], np.zeros(1, np.float32))


def test_a1111_embedding_layout(tmp_path):
    """What A1111's Embedding.save writes (modules/textual_inversion/textual_inversion.py), a Parameter inside."""
    vec = torch.nn.Parameter(torch.randn(3, 768))
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "emb", "step": 1500,
            "sd_checkpoint": "6ce0161689", "sd_checkpoint_name": "v1-5-pruned-emaonly"}
    path = tmp_path / "emb.pt"
    torch.save(data, path)
    got = load(path)
    np.testing.assert_array_equal(got["string_to_param"]["*"], vec.detach().numpy())
    assert got["string_to_token"] == {"*": 265}
    assert (got["name"], got["step"], got["sd_checkpoint"]) == ("emb", 1500, "6ce0161689")


@pytest.mark.parametrize("legacy", [False, True])
def test_parameter_dict_of_old_textual_inversion_files(tmp_path, legacy):
    vec = torch.randn(2, 768)
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vec)})
    path = tmp_path / "old.pt"
    torch.save({"string_to_param": params}, path, _use_new_zipfile_serialization=not legacy)
    got = load(path)["string_to_param"]
    assert isinstance(got, TorchModule)
    np.testing.assert_array_equal(got.parameters["*"], vec.numpy())


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/should-not-exist",))


def test_malicious_pickle_is_refused_not_run(tmp_path):
    marker = "/tmp/should-not-exist"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    torch.save({"t": torch.zeros(1), "x": _Evil()}, path)
    with pytest.raises(TorchFileError, match="refused global (posix|os).system"):
        load(path)
    assert not os.path.exists(marker)
    legacy = tmp_path / "evil-legacy.pt"
    torch.save({"x": _Evil()}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(TorchFileError, match="refused global"):
        load(legacy)
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(TorchFileError):
        load(plain)
    assert not os.path.exists(marker)


def test_garbage_and_damaged_files_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(TorchFileError):
        load(junk)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(TorchFileError):
        load(empty)
    good = tmp_path / "good.pt"
    torch.save({"t": torch.ones(4)}, good)
    missing = tmp_path / "missing.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(missing, "w") as dst:
        for item in src.infolist():
            if "/data/" not in item.filename:
                dst.writestr(item, src.read(item))
    with pytest.raises(TorchFileError, match="storage 0 is missing"):
        load(missing)
