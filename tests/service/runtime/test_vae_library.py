"""service/runtime/vae.py: which VAE files A1111 finds (modules/sd_vae.py: refresh_vae_list) and which one a
checkpoint runs with (resolve_vae), with the family rule. No torch: files are placeholders, nothing is exported."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest

from service.runtime.models import ModelEntry
from service.runtime.vae import VaeLibrary, discover, family_of_architecture, file_family, natural_key


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def safetensors_with(path: Path, metadata: dict) -> Path:
    header = json.dumps({"__metadata__": metadata}).encode()
    return touch(path, struct.pack("<Q", len(header)) + header)


def test_discovery_follows_a1111s_search_rules(tmp_path):
    models = tmp_path / "models"
    touch(models / "VAE" / "a.safetensors")
    touch(models / "VAE" / "sub" / "b10.pt")
    touch(models / "VAE" / "sub" / "b9.ckpt")
    touch(models / "VAE" / "notes.txt")
    touch(models / "VAE" / ".sdedge" / "cache.safetensors")  # our export cache: hidden, never listed
    touch(models / "sd15" / "sd15.vae.pt")  # beside a checkpoint (anywhere under the models folder)
    touch(models / "sd15" / "other.pt")  # not *.vae.*: only models/VAE lists every file
    touch(tmp_path / "outside" / "x.vae.safetensors")
    touch(tmp_path / "outside" / "y.safetensors")
    touch(tmp_path / "extra" / "deep" / "a.safetensors")  # same basename as models/VAE/a: the last found wins
    found = discover(models, [tmp_path / "extra"], [tmp_path / "outside"])
    assert [f.name for f in found] == ["a.safetensors", "b9.ckpt", "b10.pt", "sd15.vae.pt", "x.vae.safetensors"]
    assert found[0].path == (tmp_path / "extra" / "deep" / "a.safetensors").resolve()
    assert natural_key("b9.ckpt") < natural_key("b10.pt")


def entry(tmp_path: Path, name: str, architecture: str = "sd1") -> ModelEntry:
    path = tmp_path / "models" / name
    touch(path / "vae_decoder" / "config.json", b"{}")
    return ModelEntry(name=name, path=path, sha256=None, latent_space=(architecture, 4, 8))


@pytest.fixture
def library(tmp_path):
    models = tmp_path / "models"
    for name in ("vae-ft-mse.safetensors", "anime.pt", "sd15-custom.vae.safetensors"):
        touch(models / "VAE" / name, name.encode())
    return VaeLibrary(models)


def resolved(library, tmp_path, sd_vae, overrides=True, checkpoint="sd15"):
    e = entry(tmp_path, checkpoint)
    choice = library.choose(sd_vae, overrides, e)
    return choice.file.name if choice else None


def test_resolve_vae_order(library, tmp_path, caplog):
    # Automatic: a VAE whose name starts with the checkpoint's (A1111's prefix quirk), else the own VAE
    assert resolved(library, tmp_path, "Automatic") == "sd15-custom.vae.safetensors"
    assert resolved(library, tmp_path, "auto") == "sd15-custom.vae.safetensors"  # legacy value
    assert resolved(library, tmp_path, "Automatic", checkpoint="sd1") == "sd15-custom.vae.safetensors"  # prefix
    assert resolved(library, tmp_path, "Automatic", checkpoint="other") is None
    # a name, with per-model preferences overridden (the default): the setting wins
    assert resolved(library, tmp_path, "anime.pt") == "anime.pt"
    assert resolved(library, tmp_path, "None") is None
    # overrides off: user metadata, then the file near the checkpoint, then the setting
    assert resolved(library, tmp_path, "anime.pt", overrides=False) == "sd15-custom.vae.safetensors"
    assert resolved(library, tmp_path, "anime.pt", overrides=False, checkpoint="other") == "anime.pt"
    (tmp_path / "models" / "sd15.json").write_text(json.dumps({"vae": "vae-ft-mse.safetensors"}))
    assert resolved(library, tmp_path, "Automatic") == "vae-ft-mse.safetensors"
    assert resolved(library, tmp_path, "anime.pt") == "anime.pt"  # the setting still overrides metadata
    (tmp_path / "models" / "sd15.json").write_text(json.dumps({"vae": "None"}))
    assert resolved(library, tmp_path, "Automatic") is None
    with caplog.at_level(logging.WARNING):
        assert resolved(library, tmp_path, "missing.safetensors") is None
    assert "Couldn't find VAE named missing.safetensors; using None instead" in caplog.text


def test_vae_path_wins_over_everything(tmp_path):
    file = touch(tmp_path / "elsewhere" / "forced.pt")
    touch(tmp_path / "models" / "VAE" / "anime.pt")
    library = VaeLibrary(tmp_path / "models", vae_path=file)
    assert "forced.pt" in [f.name for f in library.files()]
    for setting in ("Automatic", "None", "anime.pt"):
        assert resolved(library, tmp_path, setting) == "forced.pt"


def test_choice_carries_the_file_hash_for_the_infotext(library, tmp_path):
    import hashlib

    choice = library.choose("anime.pt", True, entry(tmp_path, "sd15"))
    assert choice.sha256 == hashlib.sha256(b"anime.pt").hexdigest()
    assert choice.short_hash == choice.sha256[:10] and choice.family == "sd"


def test_family_is_read_from_metadata_sidecar_or_name(tmp_path):
    assert file_family(touch(tmp_path / "vae-ft-mse-840000.safetensors")) is None
    assert file_family(touch(tmp_path / "sdxl_vae.safetensors")) == "sdxl"
    assert file_family(safetensors_with(tmp_path / "a.safetensors",
                                        {"modelspec.architecture": "stable-diffusion-xl-v1-base/vae"})) == "sdxl"
    assert file_family(safetensors_with(tmp_path / "b.safetensors",
                                        {"modelspec.architecture": "stable-diffusion-v1/vae"})) == "sd"
    touch(tmp_path / "c.pt")
    (tmp_path / "c.json").write_text(json.dumps({"sd version": "SDXL"}))
    assert file_family(tmp_path / "c.pt") == "sdxl"


def test_a_vae_of_another_family_is_not_used(tmp_path, caplog):
    touch(tmp_path / "models" / "VAE" / "sdxl_vae.safetensors")
    touch(tmp_path / "models" / "VAE" / "plain.pt")
    library = VaeLibrary(tmp_path / "models")
    with caplog.at_level(logging.WARNING):
        assert library.choose("sdxl_vae.safetensors", True, entry(tmp_path, "sd15", "sd1")) is None
    assert "for sdxl models" in caplog.text
    assert library.choose("sdxl_vae.safetensors", True, entry(tmp_path, "xl", "sdxl")).family == "sdxl"
    # SD 1.x and 2.x share a VAE; a file that declares nothing is used on any family, as in A1111
    assert library.choose("plain.pt", True, entry(tmp_path, "sd2", "sd2")).family == "sd"
    assert library.choose("plain.pt", True, entry(tmp_path, "xl", "sdxl")).family == "sdxl"


def test_refresh_rescans(library, tmp_path):
    touch(tmp_path / "models" / "VAE" / "new.pt")
    assert "new.pt" not in [f.name for f in library.files()]
    library.refresh()
    assert "new.pt" in [f.name for f in library.files()]


def test_checkpoint_families():
    assert [family_of_architecture(a) for a in ("sd1", "sd2", "sd2-v", "sdxl", "sdxl-refiner", "sdxl_inpaint")] == [
        "sd", "sd", "sd", "sdxl", "sdxl", "sdxl"]


def test_a_file_gone_since_the_scan_is_a_503_naming_it(library, tmp_path):
    from service.a1111.errors import ModelUnavailable

    (tmp_path / "models" / "VAE" / "anime.pt").unlink()
    with pytest.raises(ModelUnavailable, match="anime.pt"):
        library.choose("anime.pt", True, entry(tmp_path, "sd15"))
