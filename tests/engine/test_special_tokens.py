"""The prompt's start, end and padding tokens come from the model's tokenizer files, never from its text encoder
config (issue 20).

Official SD 1.x diffusers folders carry transformers' legacy `bos_token_id: 0, eos_token_id: 2, pad_token_id: 1`
in `text_encoder/config.json`, while their tokenizer (and A1111, and diffusers) use 49406 / 49407 / 49407. A folder
laid out like that is built here from the demo model, exported by the real exporter and compared with diffusers'
`StableDiffusionPipeline` on the same folder; likewise an A1111 single-file checkpoint; and a bundle exported
before the fix (manifest format 1 with the config's ids) is corrected on load.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engine.bundle import MANIFEST_NAME, load_bundle
from engine.conditioning import PromptEncoder
from engine.pipeline import Pipeline
from engine.special_tokens import SpecialTokenIds, read_special_token_ids
from engine.tokenizer import ClipTokenizer
from tests.engine.test_reference_diffusers import assert_same, run_both

PROMPT = "a photograph of an astronaut riding a horse"
# Issue 20: the CLIP ids of PROMPT (without start/end), as both A1111 and diffusers tokenize it.
PROMPT_IDS = [320, 8853, 539, 550, 18376, 6765, 320, 4558]
LEGACY_CONFIG_IDS = {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
SD1_IDS = SpecialTokenIds(49406, 49407, 49407)


def _added_token(content: str, with_type: bool) -> dict:
    token = {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **token} if with_type else token


def write_official_tokenizer_configs(folder: Path, pad_token: str = "<|endoftext|>") -> None:
    """tokenizer_config.json and special_tokens_map.json as in the official SD 1.5 (pad "<|endoftext|>") and
    SD 2.x (pad "!") folders: serialised AddedTokens, no `added_tokens_decoder` (transformers' legacy path)."""
    config = {
        "add_prefix_space": False, "bos_token": _added_token("<|startoftext|>", True), "do_lower_case": True,
        "eos_token": _added_token("<|endoftext|>", True), "errors": "replace", "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14", "pad_token": pad_token,
        "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added_token("<|endoftext|>", True),
    }
    special = {"bos_token": _added_token("<|startoftext|>", False), "eos_token": _added_token("<|endoftext|>", False),
               "pad_token": pad_token, "unk_token": _added_token("<|endoftext|>", False)}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def make_official_layout(src: Path, dst: Path) -> Path:
    """The demo diffusers folder with the official SD 1.5 text encoder ids (0/2/1) and tokenizer configs."""
    shutil.copytree(src, dst)
    config_file = dst / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config.update(LEGACY_CONFIG_IDS)
    config_file.write_text(json.dumps(config, indent=2))
    write_official_tokenizer_configs(dst / "tokenizer")
    return dst


@pytest.fixture(scope="module")
def official_folder(demo_diffusers_dir, tmp_path_factory) -> Path:
    return make_official_layout(demo_diffusers_dir, tmp_path_factory.mktemp("official") / "sd15-layout")


@pytest.fixture(scope="module")
def official_bundle(official_folder, tmp_path_factory) -> Path:
    from export.onnx_export import export_diffusers_folder

    return export_diffusers_folder(official_folder, tmp_path_factory.mktemp("bundles") / "sd15-layout")


@pytest.fixture(scope="module")
def official_pipeline(official_bundle) -> Pipeline:
    return Pipeline.from_path(official_bundle)


@pytest.fixture(scope="module")
def official_reference(official_folder):
    """diffusers on the very folder the bundle was exported from (its legacy text encoder config included)."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(
        official_folder, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    assert pipe.text_encoder.config.bos_token_id == 0 and pipe.text_encoder.config.eos_token_id == 2
    return pipe


def recorded_text_encoder_ids(pipeline: Pipeline, reference, monkeypatch, prompt: str, negative: str):
    """The input_ids rows each implementation feeds its text encoder for one txt2img of `prompt`."""
    engine_rows: list[tuple[int, ...]] = []
    run = pipeline.backend.run

    def recording_run(component, inputs):
        if component == "text_encoder":
            engine_rows.extend(tuple(int(i) for i in row) for row in inputs["input_ids"])
        return run(component, inputs)

    monkeypatch.setattr(pipeline.backend, "run", recording_run)
    encoder = PromptEncoder(pipeline.backend, pipeline.tokenizer, pipeline.manifest)  # a fresh cache
    encoder.encode_texts([prompt])
    encoder.encode_texts([negative])

    ref_rows: list[tuple[int, ...]] = []
    handle = reference.text_encoder.register_forward_pre_hook(
        lambda _m, args, kwargs: ref_rows.extend(
            tuple(int(i) for i in row) for row in (args[0] if args else kwargs["input_ids"])
        ),
        with_kwargs=True,
    )
    try:
        reference.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative)
    finally:
        handle.remove()
    return engine_rows, ref_rows


# --- resolving the ids from tokenizer files, as transformers' CLIPTokenizer does --------------------------------


@pytest.mark.parametrize("layout", ["official-sd15", "official-sd2", "save_pretrained", "vocab-only"])
@pytest.mark.slow
def test_special_ids_resolve_like_transformers(layout, tmp_path):
    from transformers import CLIPTokenizer

    from export.clip_vocab import write_tokenizer_files

    write_tokenizer_files(tmp_path)
    if layout == "official-sd15":
        write_official_tokenizer_configs(tmp_path)
    elif layout == "official-sd2":
        write_official_tokenizer_configs(tmp_path, pad_token="!")
    elif layout == "save_pretrained":  # what the exporter writes into a bundle (with added_tokens_decoder)
        CLIPTokenizer.from_pretrained(tmp_path).save_pretrained(tmp_path / "saved")
        tmp_path = tmp_path / "saved"
        assert "added_tokens_decoder" in json.loads((tmp_path / "tokenizer_config.json").read_text())
    else:
        (tmp_path / "tokenizer_config.json").unlink()
        (tmp_path / "special_tokens_map.json").unlink()
    reference = CLIPTokenizer.from_pretrained(tmp_path)
    ids = read_special_token_ids(tmp_path)
    assert ids == SpecialTokenIds(reference.bos_token_id, reference.eos_token_id, reference.pad_token_id)
    assert ids == (replace(SD1_IDS, pad_token_id=0) if layout == "official-sd2" else SD1_IDS)


def test_shipped_sd15_configs_give_the_tokenizer_ids(tmp_path):
    from export.single_file import write_config_folder

    folder = write_config_folder(tmp_path / "sd15")
    assert read_special_token_ids(folder / "tokenizer") == SD1_IDS
    assert ClipTokenizer(folder / "tokenizer").bos_token_id == 49406


# --- (a) a diffusers folder with the official 0/2/1 text encoder config ------------------------------------------


@pytest.mark.slow
def test_manifest_says_the_tokenizer_ids(official_bundle, official_folder):
    from transformers import CLIPTokenizer

    raw = json.loads((official_bundle / MANIFEST_NAME).read_text())
    reference = CLIPTokenizer.from_pretrained(official_folder / "tokenizer")
    assert raw["format_version"] == 2
    assert raw["tokenizer"] == {"bos_token_id": reference.bos_token_id, "eos_token_id": reference.eos_token_id,
                                "pad_token_id": reference.pad_token_id}
    assert raw["tokenizer"] == {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    assert not {"bos_token_id", "eos_token_id", "pad_token_id"} & set(raw)  # only in the tokenizer section
    # The config's eos 2 only decides what transformers' pooled output gathers (the graph bakes it in).
    assert raw["text_pooled_output"] == "argmax_input_ids"
    assert raw["text_max_length"] == 77


@pytest.mark.slow
def test_prompt_tokens_are_the_tokenizers(official_pipeline, official_reference):
    chunk = official_pipeline.prompt_encoder.tokenize_line(PROMPT)
    assert len(chunk) == 1
    expected = official_reference.tokenizer(PROMPT, padding="max_length", max_length=77).input_ids
    assert list(chunk[0].tokens) == expected
    assert list(chunk[0].tokens) == [49406, *PROMPT_IDS, *[49407] * (77 - 1 - len(PROMPT_IDS))]


def test_text_encoder_sees_the_ids_diffusers_feeds(official_pipeline, official_reference, monkeypatch):
    engine_rows, ref_rows = recorded_text_encoder_ids(official_pipeline, official_reference, monkeypatch,
                                                      PROMPT, "blurry")
    assert sorted(engine_rows) == sorted(ref_rows) and len(ref_rows) == 2
    assert all(row[0] == 49406 and row[-1] == 49407 for row in engine_rows)


def test_image_equals_diffusers_on_the_same_folder(official_pipeline, official_reference):
    _, latents, images, ref_latents, ref_images = run_both(
        official_pipeline, official_reference, [PROMPT], ["blurry"], 64, 64, seed=3
    )
    assert_same(latents, images, ref_latents, ref_images)


def test_the_legacy_ids_would_change_the_conditioning(official_pipeline):
    """What the comparison above guards against: the config's ids give a different embedding."""
    bundle_dir = official_pipeline.bundle.path / "tokenizer"
    legacy = PromptEncoder(official_pipeline.backend, ClipTokenizer(bundle_dir, 0, 2),
                           replace(official_pipeline.manifest, tokenizer=SpecialTokenIds(0, 2, 1)))
    right = official_pipeline.prompt_encoder.encode([PROMPT])[0]
    wrong = legacy.encode([PROMPT])[0]
    assert legacy.tokenize_line(PROMPT)[0].tokens[:2] == (0, 320)
    assert np.abs(right - wrong).max() > 1e-2


# --- (b) an A1111 single-file checkpoint converted with the shipped configs --------------------------------------


@pytest.fixture(scope="module")
def single_file_pipeline(official_folder, demo_diffusers_dir, tmp_path_factory) -> Pipeline:
    import export.single_file as single_file
    from tests.export.test_single_file import copy_configs, write_ldm_checkpoint

    ckpt = write_ldm_checkpoint(official_folder, tmp_path_factory.mktemp("ckpt") / "tiny-a1111.safetensors")
    # The demo's configs stand in for configs/sd15 (the tiny weights do not fit SD 1.5's); like the shipped
    # ones they say 49406/49407 in the text encoder config, and the tokenizer comes from export/assets.
    configs = copy_configs(demo_diffusers_dir, tmp_path_factory.mktemp("configs"))
    out = tmp_path_factory.mktemp("single") / "tiny-a1111"
    single_file.export_single_file(ckpt, out, config_dir=configs)
    return Pipeline.from_path(out)


@pytest.mark.slow
def test_single_file_tokens_and_image_equal_diffusers(single_file_pipeline, official_reference, monkeypatch):
    raw = json.loads((single_file_pipeline.bundle.path / MANIFEST_NAME).read_text())
    assert raw["tokenizer"] == {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    assert raw["source_kind"] == "single_file"
    engine_rows, ref_rows = recorded_text_encoder_ids(single_file_pipeline, official_reference, monkeypatch,
                                                      PROMPT, "")
    assert sorted(engine_rows) == sorted(ref_rows)
    monkeypatch.undo()
    _, latents, images, ref_latents, ref_images = run_both(
        single_file_pipeline, official_reference, [PROMPT], [""], 64, 64, seed=4
    )
    assert_same(latents, images, ref_latents, ref_images)


# --- (c) bundles exported before the fix ------------------------------------------------------------------------


def _rewrite_manifest(bundle: Path, edit) -> None:
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    edit(raw)
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw, indent=2))


def as_format_1(raw: dict) -> None:
    """The manifest as the old exporter wrote it for an official folder: the config's ids, top level."""
    del raw["tokenizer"], raw["text_pooled_output"]
    raw.update(LEGACY_CONFIG_IDS, format_version=1)


@pytest.fixture
def old_bundle(official_bundle, tmp_path) -> Path:
    old = shutil.copytree(official_bundle, tmp_path / "old")
    _rewrite_manifest(old, as_format_1)
    return old


def test_old_bundle_with_config_ids_is_corrected_with_a_warning(old_bundle, caplog):
    with caplog.at_level(logging.WARNING, logger="engine.bundle"):
        manifest = load_bundle(old_bundle).manifest
    assert manifest.tokenizer == SD1_IDS
    assert (manifest.bos_token_id, manifest.eos_token_id, manifest.pad_token_id) == (49406, 49407, 49407)
    [record] = [r for r in caplog.records if r.name == "engine.bundle"]
    assert record.levelno == logging.WARNING
    assert "bos 0, eos 2, pad 1" in record.getMessage() and "re-export" in record.getMessage()


@pytest.mark.slow
def test_old_bundle_draws_what_a_fresh_export_draws(old_bundle, official_pipeline):
    old = Pipeline.from_path(old_bundle)
    assert old.prompt_encoder.tokenize_line(PROMPT)[0].tokens == official_pipeline.prompt_encoder.tokenize_line(
        PROMPT)[0].tokens
    np.testing.assert_array_equal(old.prompt_encoder.encode([PROMPT])[0],
                                  official_pipeline.prompt_encoder.encode([PROMPT])[0])


def test_a_current_bundle_loads_without_a_warning(official_bundle, caplog):
    with caplog.at_level(logging.WARNING, logger="engine.bundle"):
        assert load_bundle(official_bundle).manifest.tokenizer == SD1_IDS
    assert not [r for r in caplog.records if r.name == "engine.bundle"]


def test_a_wrong_tokenizer_section_is_corrected_too(official_bundle, tmp_path, caplog):
    bundle = shutil.copytree(official_bundle, tmp_path / "edited")
    _rewrite_manifest(bundle, lambda raw: raw.update(tokenizer=LEGACY_CONFIG_IDS))
    with caplog.at_level(logging.WARNING, logger="engine.bundle"):
        assert load_bundle(bundle).manifest.tokenizer == SD1_IDS
    assert any("re-export" in r.getMessage() for r in caplog.records)


def test_unreadable_tokenizer_files_are_refused_with_how_to_reexport(official_bundle, tmp_path):
    bundle = shutil.copytree(official_bundle, tmp_path / "broken")
    config_file = bundle / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["added_tokens_decoder"] = {}
    config["bos_token"] = "<|no such token|>"
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="re-export"):
        load_bundle(bundle)


def test_a_newer_manifest_format_is_refused(official_bundle, tmp_path):
    bundle = shutil.copytree(official_bundle, tmp_path / "future")
    _rewrite_manifest(bundle, lambda raw: raw.update(format_version=99))
    with pytest.raises(ValueError, match="newer"):
        load_bundle(bundle)


# --- SD 2.x-style padding (pad "!" = 0): the design, though SD 2 is not served yet ----------------------------


def test_sd2_style_padding_matches_diffusers_tokenizer(official_pipeline, tmp_path, monkeypatch):
    from transformers import CLIPTokenizer

    folder = shutil.copytree(official_pipeline.bundle.path / "tokenizer", tmp_path / "tokenizer")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink()
    write_official_tokenizer_configs(folder, pad_token="!")
    ids = read_special_token_ids(folder)
    assert ids.pad_token_id == 0
    encoder = PromptEncoder(official_pipeline.backend, ClipTokenizer(folder),
                            replace(official_pipeline.manifest, tokenizer=ids))
    seen: list[np.ndarray] = []
    run = official_pipeline.backend.run
    monkeypatch.setattr(official_pipeline.backend, "run",
                        lambda c, inputs: seen.append(inputs["input_ids"].copy()) or run(c, inputs))
    encoder.encode([PROMPT])
    # diffusers pads with the tokenizer's pad id after EOS; A1111's open_clip path likewise (A1111
    # modules/sd_hijack_clip.py: FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line).
    expected = CLIPTokenizer.from_pretrained(folder)(PROMPT, padding="max_length", max_length=77).input_ids
    assert expected[len(PROMPT_IDS) + 1:len(PROMPT_IDS) + 3] == [49407, 0]
    assert seen[0].tolist() == [expected]


def test_optimum_folder_ids_come_from_its_tokenizer(optimum_bundle):
    """A folder from `optimum-cli export onnx` has no manifest: the ids are read from its tokenizer files."""
    manifest = load_bundle(optimum_bundle).manifest
    assert manifest.tokenizer == read_special_token_ids(optimum_bundle / "tokenizer") == SD1_IDS
    assert manifest.text_max_length == 77
