"""Face restoration (engine/face_restoration.py) with small synthetic ONNX models built here: a RetinaFace-format
"detector" that finds a bright square, and "restorers" that do something checkable (GFPGAN-style: invert the
colours; CodeFormer-style: x·(1 − 2w), so w = 1 inverts and w = 0.5 gives grey)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.face_restoration import FaceRestorers, similarity_transform

SIZE = 640  # the detector runs at 640 px: a 64 px image is brought up ×10 (facexlib resize=640)
# Landmarks as fractions of the square: eyes, nose, mouth corners.
LANDMARKS = [(0.3, 0.4), (0.7, 0.4), (0.5, 0.55), (0.35, 0.75), (0.65, 0.75)]
SQUARE = (12, 12, 28, 28)  # x1, y1, x2, y2 of the white square in the 64×64 test image


def priors(size: int) -> np.ndarray:
    """RetinaFace's priors (biubug6/Pytorch_Retinaface layers/functions/prior_box.py), written out here."""
    out = []
    for step, sizes in ((8, (16, 32)), (16, (64, 128)), (32, (256, 512))):
        n = int(np.ceil(size / step))
        for i in range(n):
            for j in range(n):
                out += [[(j + 0.5) * step / size, (i + 0.5) * step / size, s / size, s / size] for s in sizes]
    return np.asarray(out, np.float32)


def detector_model(fixed_box: tuple[float, float, float, float] | None = None) -> bytes:
    """x [1, 3, 640, 640] (BGR − mean) → loc, conf, landms of RetinaFace for the box of the pixels brighter than
    100 in every channel (or for `fixed_box`, relative x1, y1, x2, y2, whatever the image); every prior centred
    inside the box scores 1 and decodes to it."""
    from onnx import TensorProto, helper, numpy_helper

    p = priors(SIZE)
    coords = (np.arange(SIZE, dtype=np.float32) / SIZE)
    inits = [
        numpy_helper.from_array(p[:, 0], "pcx"), numpy_helper.from_array(p[:, 1], "pcy"),
        numpy_helper.from_array(p[:, 2], "pw"), numpy_helper.from_array(p[:, 3], "ph"),
        numpy_helper.from_array(coords.reshape(1, 1, SIZE), "col0"),
        numpy_helper.from_array(coords.reshape(1, SIZE, 1), "row0"),
        numpy_helper.from_array((coords + 1 / SIZE).reshape(1, 1, SIZE), "col1"),
        numpy_helper.from_array((coords + 1 / SIZE).reshape(1, SIZE, 1), "row1"),
        numpy_helper.from_array(np.array(100.0, np.float32), "threshold"),
        numpy_helper.from_array(np.array(10.0, np.float32), "big"),
        numpy_helper.from_array(np.array(-10.0, np.float32), "small"),
        numpy_helper.from_array(np.array(0.1, np.float32), "v0"),
        numpy_helper.from_array(np.array(0.2, np.float32), "v1"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
    ]
    n = helper.make_node
    nodes = [
        n("ReduceMin", ["x"], ["darkest"], axes=[1], keepdims=0),
        n("Greater", ["darkest", "threshold"], ["bright"]),  # [1, H, W]
        n("Shape", ["darkest"], ["shape"]),
    ]
    for i, (name, grid, fill, reduce) in enumerate((("x1", "col0", "big", "ReduceMin"),
                                                    ("y1", "row0", "big", "ReduceMin"),
                                                    ("x2", "col1", "small", "ReduceMax"),
                                                    ("y2", "row1", "small", "ReduceMax"))):
        if fixed_box is not None:
            inits.append(numpy_helper.from_array(np.array(fixed_box[i], np.float32), name))
            continue
        nodes += [n("Expand", [grid, "shape"], [f"{name}_grid"]),
                  n("Where", ["bright", f"{name}_grid", fill], [f"{name}_all"]),
                  n(reduce, [f"{name}_all"], [name], keepdims=0)]
    nodes += [
        n("Sub", ["x2", "x1"], ["bw"]), n("Sub", ["y2", "y1"], ["bh"]),
        n("Add", ["x1", "x2"], ["sx"]), n("Div", ["sx", "two"], ["bcx"]),
        n("Add", ["y1", "y2"], ["sy"]), n("Div", ["sy", "two"], ["bcy"]),
    ]
    inits.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))

    def offset(out, value, center, size):  # (value − prior centre) / (0.1 · prior size)
        return [n("Sub", [value, center], [f"{out}_d"]), n("Mul", [size, "v0"], [f"{out}_s"]),
                n("Div", [f"{out}_d", f"{out}_s"], [out])]

    nodes += offset("lx", "bcx", "pcx", "pw") + offset("ly", "bcy", "pcy", "ph")
    nodes += [n("Div", ["bw", "pw"], ["rw"]), n("Log", ["rw"], ["lrw"]), n("Div", ["lrw", "v1"], ["lw"]),
              n("Div", ["bh", "ph"], ["rh"]), n("Log", ["rh"], ["lrh"]), n("Div", ["lrh", "v1"], ["lh"])]
    landmark_names = []
    for k, (fx, fy) in enumerate(LANDMARKS):
        for axis, frac, start, extent, center, size in (("x", fx, "x1", "bw", "pcx", "pw"),
                                                        ("y", fy, "y1", "bh", "pcy", "ph")):
            f = f"f{k}{axis}"
            inits.append(numpy_helper.from_array(np.array(frac, np.float32), f))
            nodes += [n("Mul", [extent, f], [f"{f}_e"]), n("Add", [start, f"{f}_e"], [f"{f}_p"])]
            nodes += offset(f"lm{k}{axis}", f"{f}_p", center, size)
            landmark_names.append(f"lm{k}{axis}")
    # Prior centre inside the box → score 1.
    nodes += [n("Greater", ["pcx", "x1"], ["in1"]), n("Less", ["pcx", "x2"], ["in2"]),
              n("Greater", ["pcy", "y1"], ["in3"]), n("Less", ["pcy", "y2"], ["in4"]),
              n("And", ["in1", "in2"], ["a12"]), n("And", ["in3", "in4"], ["a34"]), n("And", ["a12", "a34"], ["in"]),
              n("Cast", ["in"], ["score"], to=TensorProto.FLOAT), n("Sub", ["one", "score"], ["background"])]

    def stack(out, names):  # [N] each → [1, N, k]
        unsq = [n("Unsqueeze", [name, "last"], [f"{out}_{i}"]) for i, name in enumerate(names)]
        return unsq + [n("Concat", [f"{out}_{i}" for i in range(len(names))], [f"{out}_n"], axis=1),
                       n("Unsqueeze", [f"{out}_n", "axis0"], [out])]

    nodes += stack("loc", ["lx", "ly", "lw", "lh"]) + stack("conf", ["background", "score"])
    nodes += stack("landms", landmark_names)
    graph = helper.make_graph(
        nodes, "detector", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("loc", "conf", "landms")],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def gfpgan_model() -> bytes:
    """[1, 3, 512, 512] in [−1, 1] → its negative: inverted colours."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Neg", ["input"], ["output"])], "invert",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 512, 512])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 512, 512])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def codeformer_model() -> bytes:
    """(x, w: double scalar) → x·(1 − 2w)."""
    from onnx import TensorProto, helper, numpy_helper

    n = helper.make_node
    graph = helper.make_graph(
        [n("Cast", ["w"], ["wf"], to=TensorProto.FLOAT), n("Mul", ["wf", "two"], ["w2"]),
         n("Sub", ["one", "w2"], ["factor"]), n("Mul", ["x", "factor"], ["y"])],
        "fidelity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 512, 512]),
         helper.make_tensor_value_info("w", TensorProto.DOUBLE, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 512, 512])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def install(folder: Path, detector: bool = True, gfpgan: bool = True, codeformer: bool = True,
            fixed_box: tuple[float, float, float, float] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for wanted, name, build in ((detector, "retinaface_synthetic.onnx", lambda: detector_model(fixed_box)),
                                (gfpgan, "GFPGANv1.4.onnx", gfpgan_model),
                                (codeformer, "codeformer.onnx", codeformer_model)):
        if wanted:
            (folder / name).write_bytes(build())
    return folder


def face_image() -> Image.Image:
    image = Image.new("RGB", (64, 64), (60, 70, 80))
    image.paste((250, 250, 250), SQUARE)
    return image


@pytest.fixture(scope="module")
def restorers(tmp_path_factory) -> FaceRestorers:
    return FaceRestorers(install(tmp_path_factory.mktemp("face-restorers")))


def far_from_face(a: np.ndarray) -> np.ndarray:
    """Pixels well outside the aligned 512 crop around the square (it spans ≈ 1.7× the square)."""
    mask = np.zeros(a.shape[:2], bool)
    mask[44:, :] = True
    mask[:, 44:] = True
    return a[mask]


def test_detector_finds_the_square_and_its_landmarks(restorers):
    from engine.face_restoration import RetinaFaceDetector

    detector = RetinaFaceDetector(restorers._session(restorers.detector_path()))
    faces = detector.detect(face_image())
    assert len(faces) == 1  # every prior inside the square found it; NMS keeps one
    np.testing.assert_allclose(faces[0].box, SQUARE, atol=0.5)  # the ×10 bilinear upscale blurs edges
    x1, y1, x2, y2 = SQUARE
    expected = [(x1 + fx * (x2 - x1), y1 + fy * (y2 - y1)) for fx, fy in LANDMARKS]
    np.testing.assert_allclose(faces[0].landmarks, expected, atol=0.5)
    assert detector.detect(Image.new("RGB", (64, 64), (60, 70, 80))) == []


def test_gfpgan_style_restorer_inverts_the_face_and_nothing_else(restorers):
    image = face_image()
    restored = np.asarray(restorers.restore(image, "GFPGAN")).astype(int)
    before = np.asarray(image).astype(int)
    centre = restored[16:24, 16:24]
    assert np.abs(centre - (255 - 250)).max() <= 3  # white → black: inverted
    assert (far_from_face(restored) == far_from_face(before)).all()  # the rest untouched, bit for bit
    # Background inside the crop goes toward its inverse too (the whole aligned crop is pasted back with a soft
    # edge, as in facexlib).
    assert (restored[20, 11] - before[20, 11] > 60).all()


@pytest.mark.parametrize("weight,value", [(1.0, 5), (0.5, 128)])
def test_codeformer_style_restorer_gets_the_fidelity_weight(restorers, weight, value):
    restored = np.asarray(restorers.restore(face_image(), "CodeFormer", weight)).astype(int)
    assert np.abs(restored[16:24, 16:24] - value).max() <= 3
    assert (far_from_face(restored) == far_from_face(np.asarray(face_image()).astype(int))).all()


def test_image_without_faces_is_returned_unchanged(restorers):
    plain = Image.new("RGB", (64, 64), (60, 70, 80))
    assert restorers.restore(plain, "GFPGAN").tobytes() == plain.tobytes()


def test_names_and_what_is_missing(tmp_path):
    full = FaceRestorers(install(tmp_path / "full"))
    assert sorted(full.names()) == ["CodeFormer", "GFPGAN"]
    assert full.missing("CodeFormer") is None and full.missing("GFPGAN") is None
    assert "'RestoreFormer' is not installed" in full.missing("RestoreFormer")
    no_detector = FaceRestorers(install(tmp_path / "nodet", detector=False))
    assert "no RetinaFace detector" in no_detector.missing("GFPGAN")
    empty = FaceRestorers(tmp_path / "absent")
    assert empty.names() == [] and "installed: none" in empty.missing("CodeFormer")


def test_similarity_transform_recovers_a_known_one():
    angle, scale, shift = 0.3, 2.5, np.array([10.0, -4.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(0).uniform(0, 50, (5, 2))
    dst = src @ rotation.T + shift
    np.testing.assert_allclose(similarity_transform(src, dst), np.hstack([rotation, shift[:, None]]), atol=1e-9)
