"""`VAE hash` / `VAE` infotext entries and `info.sd_vae_*` (A1111 modules/processing.py: create_infotext,
Processed): only with a separate VAE file, after `Model`, each behind its option."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from PIL import Image

from engine.pipeline import GenerationResult
from service.a1111.infotext import create_infotext, generation_parameters
from service.a1111.results import build_response
from service.a1111.sdapi_models import Txt2ImgRequest
from service.a1111.translate import plan_txt2img
from service.runtime.models import ModelEntry

REQ = Txt2ImgRequest(prompt="p", seed=1, steps=2, width=64, height=64)


def _line(plan) -> str:
    return create_infotext("p", "", generation_parameters(plan, 0, "model", "0123456789")).splitlines()[-1]


def test_entries_only_with_a_separate_vae_in_the_options_order():
    plan = plan_txt2img(REQ, {})
    assert "VAE" not in _line(plan)
    with_vae = replace(plan, report=replace(plan.report, vae=("vae-ft-mse.safetensors", "735e4c3a44")))
    assert "Model: model, VAE hash: 735e4c3a44, VAE: vae-ft-mse.safetensors, Version" in _line(with_vae)
    no_hash = plan_txt2img(REQ, {"add_vae_hash_to_info": False})
    no_hash = replace(no_hash, report=replace(no_hash.report, vae=("v.pt", "0000000000")))
    assert "VAE hash" not in _line(no_hash) and "VAE: v.pt" in _line(no_hash)
    no_name = plan_txt2img(REQ, {"add_vae_name_to_info": False})
    no_name = replace(no_name, report=replace(no_name.report, vae=("v.pt", "0000000000")))
    assert "VAE hash: 0000000000" in _line(no_name) and "VAE:" not in _line(no_name)
    # info reports the loaded VAE whatever the infotext options say
    entry = ModelEntry(name="model", path=Path("/m"), sha256="0123456789" * 6)
    info = json.loads(build_response(no_name, GenerationResult(images=[Image.new("RGB", (64, 64))]), entry, {},
                                     {}, send_images=False)["info"])
    assert (info["sd_vae_name"], info["sd_vae_hash"]) == ("v.pt", "0000000000")
    info = json.loads(build_response(plan, GenerationResult(images=[Image.new("RGB", (64, 64))]), entry, {}, {},
                                     send_images=False)["info"])
    assert info["sd_vae_name"] is None and info["sd_vae_hash"] is None
