"""init_images naming a file on the server (`sdedge serve --allow-local-images DIR`): refused (403, naming the
flag) without it or outside DIR, symlinks included; inside, read with base64's size and pixel limits."""

import base64
import io
import json
import os

import pytest
from PIL import Image

from service.a1111.image_io import ImageInputError, ImageLimits, decode_image, is_local_path


def png(path, size=(64, 64), colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture
def folders(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    png(allowed / "cat.png")
    png(outside / "secret.png", colour=(1, 2, 3))
    return allowed, outside


def refused(value, limits, status):
    with pytest.raises(ImageInputError) as exc:
        decode_image(value, limits)
    assert exc.value.status_code == status, str(exc.value)
    return str(exc.value)


@pytest.mark.parametrize(("value", "path"), [
    ("/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDA==", False),  # JPEG base64 starts with "/"
    ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==", False),
    ("this is not base64!", False),
    ("/data/images/cat.png", True),
    ("cat.png", True),
    ("sub\\cat.jpg", True),
    ("file:///srv/cat.png", True),
])
def test_what_counts_as_a_path(value, path):
    assert is_local_path(value) is path


def test_refused_without_the_flag(folders):
    allowed, _ = folders
    message = refused(str(allowed / "cat.png"), ImageLimits(), 403)
    assert "--allow-local-images" in message


def test_files_inside_the_folder_are_read(folders):
    allowed, _ = folders
    limits = ImageLimits(local_dir=allowed)
    for value in ("cat.png", str(allowed / "cat.png"), f"file://{allowed / 'cat.png'}", "./sub/../cat.png"):
        image = decode_image(value, limits)
        assert image.size == (64, 64) and image.getpixel((0, 0)) == (200, 40, 40)


def test_nothing_outside_the_folder(folders):
    allowed, outside = folders
    limits = ImageLimits(local_dir=allowed)
    for value in ("../outside/secret.png", str(outside / "secret.png"), f"file://{outside / 'secret.png'}",
                  "/etc/passwd", "../outside/missing.png"):
        assert "--allow-local-images" in refused(value, limits, 403)
    os.symlink(outside / "secret.png", allowed / "link.png")
    os.symlink(outside, allowed / "linkdir")
    refused("link.png", limits, 403)
    refused("linkdir/secret.png", limits, 403)
    os.symlink(allowed / "cat.png", allowed / "inner.png")  # a symlink staying inside is fine
    assert decode_image("inner.png", limits).size == (64, 64)


def test_limits_and_missing_files(folders):
    allowed, _ = folders
    png(allowed / "big.png", size=(300, 300))
    refused("big.png", ImageLimits(local_dir=allowed, max_bytes=100), 413)
    refused("big.png", ImageLimits(local_dir=allowed, max_pixels=300 * 299), 413)
    refused("missing.png", ImageLimits(local_dir=allowed), 422)
    (allowed / "folder.png").mkdir()
    refused("folder.png", ImageLimits(local_dir=allowed), 422)
    (allowed / "junk.png").write_bytes(b"not a png")
    refused("junk.png", ImageLimits(local_dir=allowed), 422)


def client_for(demo_bundle, tmp, local_dir):
    from fastapi.testclient import TestClient

    from service.http.app import create_app
    from service.runtime.state import ServerConfig, ServerState

    state = ServerState(ServerConfig(model=demo_bundle, models_dir=tmp / "models", options_file=tmp / "o.json",
                                     data_dir=tmp, local_images_dir=local_dir))
    return state, TestClient(create_app(state))


def test_img2img_reads_an_allowed_path_as_it_reads_the_same_file_in_base64(demo_bundle, tmp_path, folders):
    allowed, _ = folders
    data = (allowed / "cat.png").read_bytes()
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 3, "denoising_strength": 0.6}
    state, client = client_for(demo_bundle, tmp_path, allowed)
    with client:
        by_path = client.post("/sdapi/v1/img2img", json={**body, "init_images": ["cat.png"]})
        by_data = client.post("/sdapi/v1/img2img", json={**body, "init_images": [base64.b64encode(data).decode()]})
        assert by_path.status_code == 200 and by_data.status_code == 200
        assert by_path.json()["images"] == by_data.json()["images"]
        outside = client.post("/sdapi/v1/img2img", json={**body, "init_images": ["../outside/secret.png"]})
        assert outside.status_code == 403 and "--allow-local-images" in outside.json()["detail"]
        mask = client.post("/sdapi/v1/img2img", json={**body, "init_images": ["cat.png"], "mask": "/etc/hostname"})
        assert mask.status_code == 403
        # A client cannot point the folder elsewhere through override_settings.
        r = client.post("/sdapi/v1/img2img", json={**body, "init_images": [str(tmp_path / "outside/secret.png")],
                                                   "override_settings": {"local_images_dir": "/"}})
        assert r.status_code in (403, 422) and "images" not in r.json()
    state.close()
    state, client = client_for(demo_bundle, tmp_path, None)
    with client:
        r = client.post("/sdapi/v1/img2img", json={**body, "init_images": [str(allowed / "cat.png")]})
        assert r.status_code == 403
        assert "--allow-local-images" in r.json()["detail"] and json.dumps(r.json()).count("error") >= 1
    state.close()
