"""save_images through the sdapi on the demo model: files, folders and embedded infotext as A1111 v1.10.1
writes them (modules/images.py: save_image; modules/processing.py: process_images_inner), the grid returned
first, nothing written without save_images, and no path leaving the output root."""

import base64
import datetime
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from service.a1111.image_metadata import read_info_from_image

FAST = {"steps": 1, "width": 64, "height": 64, "prompt": "a red cat, on a mat", "seed": 1234}


@pytest.fixture(scope="module")
def server(demo_bundle, tmp_path_factory):
    """(TestClient, output root) on the demo bundle with its own --data-dir."""
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    tmp = tmp_path_factory.mktemp("saving")
    root = tmp / "data"
    root.mkdir()
    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp / "models", options_file=tmp / "o.json",
                                     data_dir=root))
    with TestClient(create_app(state)) as client:
        yield client, root
    state.close()


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def clean(root: Path) -> None:
    for p in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()


def post(client, body, path="txt2img"):
    r = client.post(f"/sdapi/v1/{path}", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    return data, json.loads(data["info"])


def today() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d")


def test_nothing_is_written_without_save_images(server):
    client, root = server
    clean(root)
    data, info = post(client, {**FAST, "batch_size": 2})
    assert files(root) == [] and list(root.iterdir()) == []  # not even the folders
    assert len(data["images"]) == 2 and info["index_of_first_image"] == 0  # no grid either
    # do_not_save_* alone change nothing: save_images is what A1111's API reads
    post(client, {**FAST, "do_not_save_samples": False, "do_not_save_grid": False})
    assert files(root) == []


def test_default_options_write_a1111s_layout_and_return_the_grid_first(server):
    client, root = server
    clean(root)
    data, info = post(client, {**FAST, "batch_size": 2, "save_images": True})
    day = today()
    assert files(root) == [f"outputs/txt2img-grids/{day}/grid-0000.png",
                           f"outputs/txt2img-images/{day}/00000-1234.png",
                           f"outputs/txt2img-images/{day}/00001-1235.png"]
    # The grid comes first in the response, with its own infotext (image 0's) first in `infotexts`.
    assert info["index_of_first_image"] == 1 and len(data["images"]) == 3
    assert info["infotexts"][0] == info["infotexts"][1] and len(info["infotexts"]) == 3
    assert info["all_seeds"] == [1234, 1235] and info["all_prompts"] == [FAST["prompt"]] * 2
    grid = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    assert grid.size == (128, 64)  # 2 images: round(√2) = 1 row
    assert grid.info["parameters"] == info["infotexts"][0]
    for n, seed in enumerate((1234, 1235)):
        saved = Image.open(root / f"outputs/txt2img-images/{day}/0000{n}-{seed}.png")
        assert saved.info["parameters"] == info["infotexts"][n + 1]
        assert f"Seed: {seed}," in saved.info["parameters"]
        returned = Image.open(io.BytesIO(base64.b64decode(data["images"][n + 1])))
        assert list(saved.getdata()) == list(returned.getdata())
    saved_grid = Image.open(root / f"outputs/txt2img-grids/{day}/grid-0000.png")
    assert list(saved_grid.getdata()) == list(grid.getdata())
    assert saved_grid.info["parameters"] == info["infotexts"][0]
    # Numbers go on from the highest in the folder.
    post(client, {**FAST, "seed": 7, "save_images": True})
    assert f"outputs/txt2img-images/{day}/00002-7.png" in files(root)
    assert not any(n.endswith(".tmp") for n in files(root))


def test_flat_folders_prompt_in_name_jpeg_and_txt(server):
    client, root = server
    clean(root)
    overrides = {"save_to_dirs": False, "grid_save_to_dirs": False, "samples_format": "jpg", "save_txt": True,
                 "grid_save": False}
    data, info = post(client, {**FAST, "save_images": True, "override_settings": overrides})
    # No date folder; with save_to_dirs off the default pattern is [seed]-[prompt_spaces].
    name = "outputs/txt2img-images/00000-1234-a red cat, on a mat"
    assert files(root) == [f"{name}.jpg", f"{name}.txt"]
    saved = Image.open(root / f"{name}.jpg")
    assert saved.format == "JPEG"
    assert read_info_from_image(saved)[0] == info["infotexts"][0]  # EXIF UserComment
    assert (root / f"{name}.txt").read_text(encoding="utf8") == info["infotexts"][0] + "\n"


def test_patterns_nested_folders_no_number_webp_img2img(server):
    client, root = server
    clean(root)
    init = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init, format="PNG")
    overrides = {"directories_filename_pattern": "[model_name]/[prompt_words]",
                 "samples_filename_pattern": "[steps]-[cfg]-[sampler]-[width]x[height]-[nosuchtag]-[seed_last]",
                 "save_images_add_number": False, "samples_format": "webp", "directories_max_prompt_words": 2}
    body = {**FAST, "init_images": [base64.b64encode(init.getvalue()).decode()], "denoising_strength": 0.5,
            "sampler_name": "Euler a", "save_images": True, "override_settings": overrides}
    data, info = post(client, body, "img2img")
    # [seed_last] with batch size 1 takes the "-" before it away too.
    assert files(root) == ["outputs/img2img-images/sdedge-tiny/a red/1-7.0-Euler a-64x64-[nosuchtag].webp"]
    saved = Image.open(root / files(root)[0])
    assert saved.format == "WEBP" and read_info_from_image(saved)[0] == info["infotexts"][0]
    # Same name again: replaced (option save_images_replace_action "Replace"), or numbered.
    post(client, body, "img2img")
    assert len(files(root)) == 1
    post(client, {**body, "override_settings": {**overrides, "save_images_replace_action": "Add number suffix"}},
         "img2img")
    folder = "outputs/img2img-images/sdedge-tiny/a red"
    assert files(root) == [f"{folder}/1-7.0-Euler a-64x64-[nosuchtag]-1.webp",
                           f"{folder}/1-7.0-Euler a-64x64-[nosuchtag].webp"]


def test_do_not_save_fields_with_save_images(server):
    client, root = server
    clean(root)
    post(client, {**FAST, "batch_size": 2, "save_images": True, "do_not_save_samples": True})
    assert [f.split("/")[1] for f in files(root)] == ["txt2img-grids"]
    clean(root)
    data, info = post(client, {**FAST, "batch_size": 2, "save_images": True, "do_not_save_grid": True})
    assert [f.split("/")[1] for f in files(root)] == ["txt2img-images"] * 2
    assert info["index_of_first_image"] == 0 and len(data["images"]) == 2  # no grid made, none returned
    clean(root)
    post(client, {**FAST, "batch_size": 2, "save_images": True,
                  "override_settings": {"samples_save": False, "grid_save": False}})
    assert files(root) == []


def test_grid_options(server):
    client, root = server
    clean(root)
    data, info = post(client, {**FAST, "batch_size": 3, "save_images": True,
                               "override_settings": {"return_grid": False, "grid_prevent_empty_spots": True}})
    assert info["index_of_first_image"] == 0 and len(data["images"]) == 3 and len(info["infotexts"]) == 3
    grid_file = [f for f in files(root) if "grids" in f]
    assert len(grid_file) == 1 and Image.open(root / grid_file[0]).size == (192, 64)  # 3 has no divisor ≤ √3 but 1
    data, info = post(client, {**FAST, "save_images": True})  # one image: no grid (grid_only_if_multiple)
    assert info["index_of_first_image"] == 0 and len(data["images"]) == 1
    data, info = post(client, {**FAST, "save_images": True, "send_images": False, "batch_size": 2})
    assert data["images"] == [] and info["index_of_first_image"] == 1


@pytest.mark.parametrize("overrides", [
    {"outdir_txt2img_samples": "/tmp/elsewhere"},
    {"outdir_txt2img_samples": "../outside"},
    {"outdir_txt2img_grids": "outputs/../../outside"},
    {"directories_filename_pattern": "../../[date]"},
    {"directories_filename_pattern": "/etc/[date]"},
    {"samples_filename_pattern": "../[seed]"},
    {"samples_filename_pattern": "a/[seed]"},
    {"directories_filename_pattern": "[x/../../../y]"},  # an unknown tag is kept as written
    {"samples_filename_pattern": "[a/b]-[seed]"},
])
def test_paths_leaving_the_output_root_are_refused(server, overrides):
    client, root = server
    clean(root)
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "batch_size": 2, "save_images": True,
                                               "override_settings": overrides})
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) >= {"error", "detail"}
    assert "refused" in body["detail"] or "separator" in body["detail"]
    assert files(root) == [] and not (root.parent / "outside").exists() and not Path("/tmp/elsewhere").exists()


def test_tags_cannot_climb_out(server):
    client, root = server
    clean(root)
    body = {**FAST, "prompt": "../../../etc/passwd", "save_images": True,
            "override_settings": {"samples_filename_pattern": "[prompt]", "directories_filename_pattern": "[prompt]"}}
    post(client, body)
    [saved] = files(root)
    assert saved.startswith("outputs/txt2img-images/") and saved.count("/") == 3
    assert (root / saved).resolve().is_relative_to(root.resolve())


def test_a_symlink_out_of_the_root_is_not_followed(server, tmp_path):
    client, root = server
    clean(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "outputs" / "txt2img-images").mkdir(parents=True)
    os.symlink(outside, root / "outputs" / "txt2img-images" / today())
    data, info = post(client, {**FAST, "save_images": True})
    assert list(outside.iterdir()) == []
    assert any("could not save" in w for w in info.get("sdedge_warnings", []))
    assert len(data["images"]) == 1  # the job still answers with its image
    # An outdir that is itself such a symlink is refused before the job runs.
    os.symlink(outside, root / "link")
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "save_images": True,
                                               "override_settings": {"outdir_txt2img_samples": "link/x"}})
    assert r.status_code == 422 and list(outside.iterdir()) == []


def test_export_for_4chan_writes_a_downscaled_jpeg_beside_a_large_image(tmp_path):
    from service.a1111.filenames import FilenameGenerator, NameContext
    from service.a1111.job_options import JobOptions
    from service.a1111.saving import save_image

    image = Image.new("RGB", (96, 48), (10, 200, 10))
    namegen = FilenameGenerator(NameContext(1, 7.0, "Euler", "Automatic"), 5, "p", image)
    options = JobOptions(target_side_length=32, save_to_dirs=False)
    saved = save_image(image, tmp_path / "out", "", namegen, options, tmp_path, info="text")
    assert saved.path.name == "00000-5-p.png" and saved.downscaled == tmp_path / "out" / "00000-5-p.jpg"
    small = Image.open(saved.downscaled)
    assert small.format == "JPEG" and small.size == (32, 16)  # the long side to target_side_length
    assert read_info_from_image(small)[0] == "text"
    # Off, or small enough (and under img_downscale_threshold MB): the image alone.
    saved = save_image(image, tmp_path / "out", "", namegen, JobOptions(save_to_dirs=False), tmp_path, info="t")
    assert saved.downscaled is None and saved.path.name == "00001-5-p.png"
    # A grid: short name `grid-NNNN` unless grid_extended_filename.
    saved = save_image(image, tmp_path / "g", "grid", namegen, JobOptions(grid_save_to_dirs=False), tmp_path,
                       short_filename=True, grid=True)
    assert saved.path.name == "grid-0000.png" and "parameters" not in Image.open(saved.path).info
    umask = os.umask(0)
    os.umask(umask)
    assert saved.path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() makes it, not mkstemp's 0600
