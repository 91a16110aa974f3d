"""Prompt styles: styles.csv (A1111 modules/styles.py: StyleDatabase), applying them (A1111 modules/styles.py:
StyleDatabase.apply_styles_to_prompt), finding them again, GET /prompt-styles."""

import os
from pathlib import Path

import pytest

from service.a1111.styles import (
    PromptStyle,
    StyleDatabase,
    apply_styles,
    extract_styles,
    merge_prompt,
    read_styles_csv,
)

STYLES = {
    "photo": PromptStyle("photo", "photo of {prompt}, 35mm", "cartoon"),
    "sharp": PromptStyle("sharp", "  sharp focus  ", "blurry, {prompt}"),
    "empty": PromptStyle("empty", "", ""),
}


def test_merge_prompt():
    assert merge_prompt("photo of {prompt}, 35mm", " a cat ") == "photo of  a cat , 35mm"  # no stripping here
    assert merge_prompt("  sharp focus ", " a cat ") == "a cat, sharp focus"
    assert merge_prompt("", "  a cat ") == "a cat"  # empty parts are skipped, the prompt still stripped
    assert merge_prompt("sharp", "") == "sharp"
    assert merge_prompt("{prompt} {prompt}", "x") == "x x"


def test_apply_styles_in_order():
    prompt, negative = apply_styles("a cat", "", ["photo", "sharp"], STYLES)
    assert prompt == "photo of a cat, 35mm, sharp focus"
    assert negative == "blurry, cartoon"  # "cartoon", then "blurry, {prompt}"
    # unknown names contribute nothing but the prompts are still stripped
    assert apply_styles("  a cat ", " ugly ", ["nope"], STYLES) == ("a cat", "ugly")
    assert apply_styles("  a cat ", " ugly ", None, STYLES) == ("  a cat ", " ugly ")


def test_extract_styles_undoes_apply():
    prompt, negative = apply_styles("a cat", "ugly", ["photo", "sharp"], STYLES)
    assert extract_styles(prompt, negative, STYLES.values()) == (["photo", "sharp"], "a cat", "ugly")
    assert extract_styles("a dog", "ugly", STYLES.values()) == ([], "a dog", "ugly")


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_read_styles_csv(tmp_path):
    path = write(tmp_path / "styles.csv", 'name,prompt,negative_prompt\n'
                 'anime, "anime, {prompt}",  "photo, 3d"\n'
                 '# note,ignored,ignored\n'
                 'multi,"line one\nline two",\n'
                 'short,only prompt\n', bom=True)
    styles = read_styles_csv(path)
    assert list(styles) == ["anime", "multi", "short"]
    assert styles["anime"] == PromptStyle("anime", "anime, {prompt}", "photo, 3d", str(path))
    assert styles["multi"].prompt == "line one\nline two" and styles["multi"].negative_prompt == ""
    assert styles["short"].negative_prompt == ""
    legacy = read_styles_csv(write(tmp_path / "old.csv", "name,text\nold,legacy text\n"))
    assert legacy["old"].prompt == "legacy text"


def test_several_files_dividers_override_and_reload(tmp_path):
    first = write(tmp_path / "styles.csv", "name,prompt,negative_prompt\na,one,\nb,two,\n")
    write(tmp_path / "more-styles.csv", "name,prompt,negative_prompt\nb,TWO,\nc,three,\n")
    database = StyleDatabase([first, tmp_path / "more-*.csv"])
    styles = database.styles
    # a divider per file: the stem upper-cased, one space each side, centred in 40 "-" (A1111
    # modules/api/api.py: Api.get_prompt_styles)
    assert list(styles) == [" STYLES ".center(40, "-"), "a", "b", " MORE-STYLES ".center(40, "-"), "c"]
    assert styles[" STYLES ".center(40, "-")] == PromptStyle(" STYLES ".center(40, "-"), None, None)
    assert styles["b"].prompt == "TWO"  # later files override earlier names
    write(first, "name,prompt,negative_prompt\na,uno,\n")
    os.utime(first, ns=(1, 1))  # a different mtime, whatever the clock's resolution
    assert database.styles["a"].prompt == "uno"
    assert database.apply("x", "", ["a", "c"]) == ("x, uno, three", "")


def test_missing_and_broken_files(tmp_path):
    assert StyleDatabase([tmp_path / "none.csv"]).styles == {}
    broken = write(tmp_path / "broken.csv", "title,prompt\nx,y\n")  # no name column: reported, skipped
    assert StyleDatabase([broken]).styles == {}


def test_prompt_styles_route(tmp_path):
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    path = write(tmp_path / "styles.csv", "name,prompt,negative_prompt\nanime,\"anime, {prompt}\",photo\n")
    config = ServerConfig(models_dir=tmp_path / "models", options_file=tmp_path / "o.json",
                          extra={"styles_file": str(path)})
    with TestClient(create_app(ServerState(config))) as client:
        response = client.get("/sdapi/v1/prompt-styles")
    assert response.status_code == 200
    assert response.json() == [{"name": "anime", "prompt": "anime, {prompt}", "negative_prompt": "photo"}]
