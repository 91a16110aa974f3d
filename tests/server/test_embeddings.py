"""Textual-inversion embeddings in the service: the registry (files, per-model split, reloads), the routes, the
`TI hashes` infotext and its gRPC twin. The engine's side (engine.pipeline.Pipeline.set_embeddings,
accepts_embedding, embeddings_used) is stood in for by `FakePipeline`, which follows that contract."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from engine.textual_inversion import Embedding
from service.a1111.infotext import create_infotext, generation_parameters, parse_infotext
from service.a1111.job_options import JobOptions
from service.a1111.sdapi_models import Txt2ImgRequest
from service.a1111.translate import plan_txt2img
from service.runtime.embeddings import EmbeddingRegistry, ti_hashes, ti_hashes_text

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")


class FakePipeline:
    """engine.pipeline.Pipeline's embedding contract: a table per model, width check, first-use order."""

    def __init__(self, widths: Mapping[str, int]):
        self.widths = dict(widths)
        self.table: dict[str, Embedding] | None = None
        self.set_calls = 0

    def set_embeddings(self, embeddings: Mapping[str, Embedding]) -> None:
        self.table = dict(embeddings)
        self.set_calls += 1

    def accepts_embedding(self, e: Embedding) -> bool:
        widths = {k: v.shape[-1] for k, v in e.vectors.items()}
        if len(widths) == 1 and len(self.widths) == 1:  # a lone tensor, on a model of one text encoder
            return list(widths.values()) == list(self.widths.values())
        return widths == self.widths

    def embeddings_used(self, prompts: Sequence[str], negative_prompts: Sequence[str] = (),
                        **schedule) -> tuple[Embedding, ...]:
        found: dict[str, Embedding] = {}
        by_lower = {name.lower(): e for name, e in (self.table or {}).items()}
        for prompt in [*prompts, *negative_prompts]:
            for word in re.findall(r"[\w-]+", prompt.lower()):
                if word in by_lower:
                    found.setdefault(by_lower[word].name, by_lower[word])
        return tuple(found.values())


SD1 = {"text_encoder": 768}
SDXL = {"text_encoder": 768, "text_encoder_2": 1280}


def sha12(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "embeddings"
    (d / "sub").mkdir(parents=True)
    torch.save({"string_to_param": {"*": torch.randn(2, 768)}, "step": 500, "sd_checkpoint": "abc",
                "sd_checkpoint_name": "v1-5"}, d / "zeta.pt")
    torch.save({"string_to_param": {"*": torch.randn(1, 768)}}, d / "sub" / "Alpha.pt")
    safetensors_torch.save_file({"clip_l": torch.randn(3, 768), "clip_g": torch.randn(3, 1280)}, d / "xl.safetensors")
    (d / "empty.pt").write_bytes(b"")
    (d / "broken.pt").write_bytes(b"garbage")
    return d


def test_listing_without_a_model_loads_every_file_sorted_case_insensitively(folder):
    registry = EmbeddingRegistry([folder])
    listing = registry.listing(None)
    assert list(listing["loaded"]) == ["Alpha", "xl", "zeta"]
    assert listing["skipped"] == {}
    assert listing["loaded"]["zeta"] == {"step": 500, "sd_checkpoint": "abc", "sd_checkpoint_name": "v1-5",
                                         "shape": 768, "vectors": 2}
    assert listing["loaded"]["xl"] == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                       "shape": 2048, "vectors": 3}
    assert list(registry.errors()) == [str(folder / "broken.pt")]


def test_each_model_gets_the_files_of_its_width(folder):
    registry = EmbeddingRegistry([folder])
    sd1, xl = FakePipeline(SD1), FakePipeline(SDXL)
    registry.apply(sd1)
    registry.apply(xl)
    assert list(sd1.table) == ["Alpha", "zeta"] and list(xl.table) == ["xl"]
    assert list(registry.listing(sd1)["skipped"]) == ["xl"]
    assert list(registry.listing(xl)["skipped"]) == ["zeta", "Alpha"]  # in the order the files were read
    registry.apply(sd1)  # same version of the files: not given again
    assert sd1.set_calls == 1


def test_no_files_no_calls_and_no_hashes(tmp_path):
    registry = EmbeddingRegistry([tmp_path / "missing"])
    pipeline = FakePipeline(SD1)
    registry.prepare([pipeline, None])
    assert pipeline.set_calls == 0  # a fresh pipeline's table is empty already
    assert registry.used(pipeline, ["anything"]) == ()
    assert registry.listing(pipeline) == {"loaded": {}, "skipped": {}}


def test_folder_mtime_change_reloads_before_a_generation(folder):
    registry = EmbeddingRegistry([folder])
    pipeline = FakePipeline(SD1)
    registry.prepare([pipeline])
    assert "new" not in pipeline.table
    past = time.time() - 10
    os.utime(folder, (past, past))  # a later write is seen as a change even on coarse clocks
    registry.refresh()
    assert registry.refresh_if_changed() is False
    torch.save({"string_to_param": {"*": torch.randn(1, 768)}}, folder / "new.pt")
    registry.prepare([pipeline])
    assert "new" in pipeline.table and pipeline.set_calls == 2
    (folder / "new.pt").unlink()
    registry.prepare([pipeline])
    assert "new" not in pipeline.table  # a model whose table shrinks is told too


def test_a_model_load_rereads_the_files_and_gives_them(folder):
    registry = EmbeddingRegistry([folder])
    loads = []

    def loader(path, providers, choice):
        loads.append(path)
        return FakePipeline(SD1)

    wrapped = registry.after_load(loader)
    torch.save({"string_to_param": {"*": torch.randn(1, 768)}}, folder / "sub" / "late.pt")  # subfolder: no mtime
    pipeline = wrapped("m", "cpu", None)
    assert loads == ["m"] and "late" in pipeline.table


def test_last_file_of_a_name_wins(tmp_path):
    d = tmp_path / "e"
    (d / "b").mkdir(parents=True)
    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}}, d / "a.pt")
    torch.save({"string_to_param": {"*": torch.zeros(1, 1024)}}, d / "b" / "a.pt")
    listing = EmbeddingRegistry([d]).listing(FakePipeline(SD1))
    assert listing == {"loaded": {}, "skipped": {"a": {"step": None, "sd_checkpoint": None,
                                                      "sd_checkpoint_name": None, "shape": 1024, "vectors": 1}}}


def _plan(prompt: str, negative: str = "", hr_prompt: str = "", **more):
    req = Txt2ImgRequest(prompt=prompt, negative_prompt=negative, steps=1, width=64, height=64, hr_prompt=hr_prompt,
                         **more)
    return plan_txt2img(req, JobOptions())


def test_ti_hashes_positive_then_negative_then_hires_each_once(folder):
    registry = EmbeddingRegistry([folder])
    base, hires = FakePipeline(SD1), FakePipeline(SD1)
    registry.prepare([base, hires])
    plan = _plan("a zeta photo", "alpha, ZETA", enable_hr=True, hr_scale=2, denoising_strength=0.5,
                 hr_prompt="with alpha")
    text = ti_hashes(registry, plan, base, hires)
    assert text == f"zeta: {sha12(folder / 'zeta.pt')}, Alpha: {sha12(folder / 'sub' / 'Alpha.pt')}"
    assert ti_hashes(registry, _plan("nothing here"), base) is None
    odd = Embedding("we:ird,name", {"text_encoder": np.zeros((1, 768), np.float32)}, shorthash="0123456789ab")
    assert ti_hashes_text([odd]) == "weirdname: 0123456789ab"
    assert ti_hashes_text([replace(odd, shorthash="")]) is None


def test_ti_hashes_in_the_infotext_after_lora_hashes_and_pasting_it_changes_nothing():
    plan = _plan("a cat")
    plan = replace(plan, report=replace(plan.report, lora_hashes="l: 111111111111", ti_hashes="e: 222222222222"))
    params = generation_parameters(plan, 0, "model", "abcdef0123")
    keys = list(params)
    assert keys.index("TI hashes") == keys.index("Lora hashes") + 1
    text = create_infotext("a cat", "", params)
    assert 'Lora hashes: "l: 111111111111", TI hashes: "e: 222222222222"' in text
    pasted = parse_infotext(text)
    assert pasted["TI hashes"] == "e: 222222222222"  # read back as text; A1111 resolves nothing from it
    assert pasted["Prompt"] == "a cat"
    from service.a1111.infotext_request import apply_infotext
    from service.runtime.options import ALL_DEFAULTS

    req = apply_infotext(Txt2ImgRequest(infotext=text), ALL_DEFAULTS)
    assert (req.prompt, req.override_settings) == ("a cat", {})  # no setting, no prompt change from it


def test_generation_notes_ti_hashes_for_response_and_saving(folder):
    from service.runtime.generate import Generation

    registry = EmbeddingRegistry([folder])
    state = SimpleNamespace(embeddings=registry)
    plan = _plan("zeta")
    g = Generation(state, None, plan, None, None, JobOptions(), {}, 0, "t")
    pipeline = FakePipeline(SD1)
    g.note_embeddings(pipeline)
    assert pipeline.table is not None
    assert g.reported_plan().report.ti_hashes == f"zeta: {sha12(folder / 'zeta.pt')}"
    off = Generation(state, None, plan, None, None, JobOptions(textual_inversion_add_hashes_to_infotext=False), {}, 0,
                     "t")
    off.note_embeddings(pipeline)
    assert off.reported_plan().report.ti_hashes is None


def test_bundled_embeddings_first_lora_wins_and_the_name_as_written_is_the_hash():
    """A1111 load_networks: a bundled name already registered (by an earlier LoRA of the prompt) is skipped;
    BundledTIHash is the name the prompt used (an alias here), and only shows with lora_bundled_ti_to_infotext."""
    from engine.lora import LoadedNetwork
    from service.runtime.loras import bundled_embeddings

    first, later, other = (Embedding(n, {"text_encoder": np.full((1, 768), v, np.float32)})
                           for n, v in (("x", 1.0), ("x", 2.0), ("y", 3.0)))
    found = bundled_embeddings([(LoadedNetwork("a", {}, {"x": first}), "alias-a"),
                                (LoadedNetwork("b", {}, {"x": later, "y": other}), "b")])
    assert list(found) == ["x", "y"]
    assert found["x"].vectors is first.vectors and (found["x"].shorthash, found["x"].network) == ("alias-a", "alias-a")
    assert found["y"].shorthash == "b"
    used = [found["x"], Embedding("f", shorthash="0123456789ab")]
    assert ti_hashes_text(used) == "x: alias-a, f: 0123456789ab"
    assert ti_hashes_text(used, bundled_names=False) == "x: , f: 0123456789ab"  # listed, its hash empty


def test_a_pass_with_bundled_embeddings_reports_them_without_any_file(tmp_path):
    registry = EmbeddingRegistry([tmp_path / "missing"])
    pipeline = FakePipeline(SD1)
    bundled = Embedding("inlora", {"text_encoder": np.zeros((1, 768), np.float32)}, shorthash="mylora",
                        network="mylora")
    pipeline.bundled_embeddings = {"inlora": bundled}  # engine.pipeline.Pipeline.with_bundled_embeddings
    pipeline.table = {"inlora": bundled}
    registry.prepare([pipeline])
    assert ti_hashes(registry, _plan("an inlora cat"), pipeline) == "inlora: mylora"
    assert ti_hashes(registry, _plan("an inlora cat"), pipeline, bundled_names=False) == "inlora: "


def test_the_refiners_conditioning_adds_no_ti_hashes(tmp_path):
    """A1111 copies `TI hashes` into the job's infotext after the first pass's conds and before sampling; the
    refiner's prompts are encoded mid-sampling (apply_refiner → setup_conds), too late for it. An embedding only
    the refiner takes (a lone 1280-wide tensor) is given to it and inserted, but not listed."""
    from service.runtime.generate import Generation

    folder = tmp_path / "embeddings"
    folder.mkdir()
    safetensors_torch.save_file({"emb_params": torch.randn(1, 1280)}, folder / "gonly.safetensors")
    registry = EmbeddingRegistry([folder])
    base, refiner = FakePipeline(SDXL), FakePipeline({"text_encoder_2": 1280})
    g = Generation(SimpleNamespace(embeddings=registry), None, _plan("a gonly cat"), None, None, JobOptions(), {},
                   0, "t")
    g.note_embeddings(base, None, refiner)
    assert list(refiner.table) == ["gonly"] and base.table is None  # the refiner has it, the base does not
    assert [e.name for e in refiner.embeddings_used(["a gonly cat"])] == ["gonly"]
    assert g.reported_plan().report.ti_hashes is None


def test_grpc_response_types_the_embeddings():
    from service.rpc.convert import generation_response

    info = {"infotexts": [], "all_prompts": [], "all_negative_prompts": []}
    response = {"images": [], "parameters": {}, "info": json.dumps(info), "networks": [],
                "embeddings": [{"name": "e", "hash": "222222222222"}]}
    typed = generation_response(response, "task", False)
    assert [(e.name, e.hash) for e in typed.info.embeddings] == [("e", "222222222222")]


# The HTTP door ------------------------------------------------------------------------------------------------

def _client(tmp_path, folder, api_auth=None):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    state = ServerState(ServerConfig(models_dir=tmp_path / "models", embeddings_dirs=[folder], api_auth=api_auth,
                                     options_file=tmp_path / "config.json"))
    return state, TestClient(create_app(state))


def test_routes_list_and_refresh(tmp_path, folder, monkeypatch):
    state, client = _client(tmp_path, folder)
    r = client.get("/sdapi/v1/embeddings")
    assert r.status_code == 200
    assert list(r.json()["loaded"]) == ["Alpha", "xl", "zeta"]
    sdxl = (SimpleNamespace(), FakePipeline(SDXL))  # a loaded SDXL model: its split
    monkeypatch.setattr(type(state.models), "loaded", property(lambda self: sdxl))
    body = client.get("/sdapi/v1/embeddings").json()
    assert list(body["loaded"]) == ["xl"] and set(body["skipped"]) == {"zeta", "Alpha"}
    assert body["skipped"]["zeta"]["shape"] == 768
    (folder / "sub" / "Alpha.pt").unlink()  # inside a subfolder: only a refresh sees it
    assert client.post("/sdapi/v1/refresh-embeddings").json() is None
    assert set(client.get("/sdapi/v1/embeddings").json()["skipped"]) == {"zeta"}


def test_routes_are_behind_api_auth_unlike_the_lora_routes(tmp_path, folder):
    _, client = _client(tmp_path, folder, api_auth="u:p")
    assert client.get("/sdapi/v1/embeddings").status_code == 401
    assert client.post("/sdapi/v1/refresh-embeddings").status_code == 401
    assert client.get("/sdapi/v1/loras").status_code == 200
    auth = "Basic " + base64.b64encode(b"u:p").decode()
    assert client.get("/sdapi/v1/embeddings", headers={"Authorization": auth}).status_code == 200
