"""Face restoration with ONNX models, as A1111 runs it (modules/face_restoration_utils.py:
restore_with_face_helper, on facexlib's FaceRestoreHelper): detect faces and their 5 landmarks → warp each face to
a 512×512 crop aligned to FFHQ's landmark template → restore the crop → warp it back and paste it with a soft mask.

Models are files the user places in a folder (`--face-restorers-dir`, default `models/face-restorers`):

- **detector**: a RetinaFace ONNX export (file name containing `retinaface`), the detector facexlib uses in A1111
  (`detection_Resnet50_Final.pth`, the network of biubug6/Pytorch_Retinaface; its `convert_to_onnx.py` or
  facexlib's `RetinaFace` under `torch.onnx.export` writes this format). Input [1, 3, H, W] BGR float minus the
  mean (104, 117, 123); outputs, in this order, `loc` [1, N, 4], `conf` [1, N, 2] (softmaxed; column 1 is the face
  score) and `landms` [1, N, 10], over the priors of steps (8, 16, 32) and sizes ((16, 32), (64, 128), (256, 512)),
  decoded with variances (0.1, 0.2).
- **restorers**: every other `.onnx` file. One input [1, 3, 512, 512] RGB in [−1, 1] (a GFPGAN export, e.g.
  `GFPGANv1.4.onnx`), or two where the second is CodeFormer's fidelity weight `w` (a CodeFormer export, e.g.
  `codeformer.onnx`); the first output is the restored face in [−1, 1]. Named `CodeFormer` / `GFPGAN` when the file
  name says so (A1111's names, what option `face_restoration_model` holds), else by the file's stem.

The alignment and pasting follow facexlib (`FaceRestoreHelper.align_warp_face`, `paste_faces_to_input_image`
without face parsing) with PIL and NumPy: a least-squares similarity transform (facexlib: OpenCV's
`estimateAffinePartial2D` with LMEDS, the same transform for consistent landmarks) and PIL's bilinear warps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

log = logging.getLogger(__name__)

FACE_SIZE = 512
# facexlib FaceRestoreHelper.face_template for a 512 crop: eyes, nose, mouth corners (FFHQ alignment).
FACE_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)
BORDER_VALUE = (135, 133, 132)  # facexlib's warpAffine border colour for the crop
RETINAFACE_MEAN_BGR = (104.0, 117.0, 123.0)
RETINAFACE_STEPS = (8, 16, 32)
RETINAFACE_MIN_SIZES = ((16, 32), (64, 128), (256, 512))
RETINAFACE_VARIANCES = (0.1, 0.2)
# RetinaFace.detect_faces' default threshold, which get_face_landmarks_5 uses in the facexlib that takes
# `eye_dist_threshold` (what A1111 passes); older facexlib passed 0.97.
CONFIDENCE = 0.8
NMS_THRESHOLD = 0.4
DETECT_RESIZE = 640  # get_face_landmarks_5(resize=640): the short side brought up to 640 px
EYE_DIST_THRESHOLD = 5  # faces whose eyes are closer (px) are skipped (restore_with_face_helper)


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float
    landmarks: np.ndarray  # [5, 2]: right eye, left eye, nose, mouth right, mouth left (image pixels)


def retinaface_priors(height: int, width: int) -> np.ndarray:
    """biubug6/Pytorch_Retinaface `PriorBox.forward`: [N, 4] (cx, cy, w, h) relative to the image, per feature-map
    cell row by row, each cell's sizes in order."""
    anchors = []
    for step, sizes in zip(RETINAFACE_STEPS, RETINAFACE_MIN_SIZES, strict=True):
        rows, cols = -(-height // step), -(-width // step)  # ceil
        for i in range(rows):
            for j in range(cols):
                for size in sizes:
                    anchors.append(((j + 0.5) * step / width, (i + 0.5) * step / height, size / width,
                                    size / height))
    return np.asarray(anchors, dtype=np.float32).reshape(-1, 4)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression (py_cpu_nms of Pytorch_Retinaface), indices of kept boxes by score."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        overlap = w * h / (areas[i] + areas[order[1:]] - w * h)
        order = order[1:][overlap <= threshold]
    return keep


class RetinaFaceDetector:
    """Faces and their 5 landmarks (facexlib RetinaFace.detect_faces, via FaceRestoreHelper.get_face_landmarks_5)."""

    def __init__(self, session):
        self.session = session

    def detect(self, image: Image.Image) -> list[Face]:
        scale = max(1.0, DETECT_RESIZE / min(image.size))
        if scale > 1.0:
            size = (round(image.width * scale), round(image.height * scale))
            resized = image.resize(size, Image.Resampling.BILINEAR)
        else:
            resized = image
        bgr = np.asarray(resized.convert("RGB"), dtype=np.float32)[:, :, ::-1] - np.array(RETINAFACE_MEAN_BGR,
                                                                                          np.float32)
        x = np.ascontiguousarray(bgr.transpose(2, 0, 1)[None])
        loc, conf, landms = self.session.run(None, {self.session.get_inputs()[0].name: x})[:3]
        h, w = x.shape[2:]
        priors = retinaface_priors(h, w)
        v0, v1 = RETINAFACE_VARIANCES
        loc, landms, scores = loc[0], landms[0], conf[0][:, 1]
        centers = priors[:, :2] + loc[:, :2] * v0 * priors[:, 2:]
        sizes = priors[:, 2:] * np.exp(loc[:, 2:] * v1)
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1) * [w, h, w, h]
        points = (priors[:, None, :2] + landms.reshape(-1, 5, 2) * v0 * priors[:, None, 2:]) * [w, h]
        keep = scores > CONFIDENCE
        boxes, points, scores = boxes[keep], points[keep], scores[keep]
        faces = []
        for i in _nms(boxes, scores, NMS_THRESHOLD):
            faces.append(Face(tuple(float(v) / scale for v in boxes[i]), float(scores[i]),
                              points[i].astype(np.float64) / scale))
        return faces


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 rotation + uniform scale + translation taking `src` points closest to `dst` (least squares)."""
    rows = []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows.append(([x, -y, 1, 0], u))
        rows.append(([y, x, 0, 1], v))
    a = np.array([r[0] for r in rows], dtype=np.float64)
    b = np.array([r[1] for r in rows], dtype=np.float64)
    (p, q, tx, ty), *_ = np.linalg.lstsq(a, b, rcond=None)
    return np.array([[p, -q, tx], [q, p, ty]])


def _invert(affine: np.ndarray) -> np.ndarray:
    full = np.vstack([affine, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def _warp(image: Image.Image, affine: np.ndarray, size: tuple[int, int], fill) -> Image.Image:
    """`image` under `affine` (output = affine · input), like cv2.warpAffine; PIL wants the inverse map."""
    inverse = _invert(affine)
    return image.transform(size, Image.Transform.AFFINE, tuple(inverse.reshape(-1)), Image.Resampling.BILINEAR,
                           fillcolor=fill)


@dataclass
class FaceRestorer:
    """One restoration model (GFPGAN- or CodeFormer-style export)."""

    name: str
    session: object

    @property
    def takes_weight(self) -> bool:
        return len(self.session.get_inputs()) > 1

    def restore_face(self, crop: Image.Image, weight: float) -> Image.Image:
        """A 512×512 RGB crop → the restored crop (A1111 modules/codeformer_model.py, gfpgan_model.py)."""
        x = np.asarray(crop.convert("RGB"), dtype=np.float32) / 255.0 * 2.0 - 1.0
        inputs = self.session.get_inputs()
        feed = {inputs[0].name: np.ascontiguousarray(x.transpose(2, 0, 1)[None])}
        if self.takes_weight:  # CodeFormer's fidelity `w`, in the dtype and rank the export declares
            spec = inputs[1]
            dtype = np.float64 if spec.type == "tensor(double)" else np.float32
            feed[spec.name] = np.array(weight, dtype=dtype).reshape([1] * len(spec.shape))
        out = self.session.run(None, feed)[0][0]
        pixels = (np.clip(out.transpose(1, 2, 0), -1.0, 1.0) + 1.0) / 2.0 * 255.0
        return Image.fromarray(np.rint(pixels).astype(np.uint8), "RGB")


def paste_face(image: np.ndarray, restored: Image.Image, affine: np.ndarray) -> np.ndarray:
    """facexlib `paste_faces_to_input_image` without face parsing: the restored crop warped back, kept where the
    warped crop area (eroded) covers, blended by that area eroded by 2·w_edge and blurred (w_edge = √area / 20).
    PIL's MinFilter takes odd sizes: kernels are rounded up to the next odd size."""
    h, w = image.shape[:2]
    inverse = _invert(affine)
    back = np.asarray(_warp(restored, inverse, (w, h), (0, 0, 0)), dtype=np.float64)
    ones = Image.fromarray(np.full((FACE_SIZE, FACE_SIZE), 255, np.uint8), "L")
    eroded = _warp(ones, inverse, (w, h), 0).filter(ImageFilter.MinFilter(3))
    covered = np.asarray(eroded, np.float64)[:, :, None] / 255.0
    edge = int(float(covered.sum()) ** 0.5) // 20
    center = eroded.filter(ImageFilter.MinFilter(2 * edge + 1)) if edge else eroded
    # cv2.GaussianBlur with ksize 2·edge + 1 and σ 0: σ = 0.3·(edge − 1) + 0.8.
    soft = center.filter(ImageFilter.GaussianBlur(0.3 * (edge - 1) + 0.8)) if edge else center
    soft = np.asarray(soft, np.float64)[:, :, None] / 255.0
    return soft * (covered * back) + (1.0 - soft) * image


def restore_faces(image: Image.Image, detector: RetinaFaceDetector, restorer: FaceRestorer,
                  weight: float = 0.5) -> Image.Image:
    """Every detected face of `image` restored and pasted back (A1111 modules/face_restoration_utils.py:
    restore_with_face_helper); an image without faces comes back unchanged."""
    faces = [f for f in detector.detect(image)
             if np.linalg.norm(f.landmarks[0] - f.landmarks[1]) >= EYE_DIST_THRESHOLD]
    if not faces:
        return image
    rgb = image.convert("RGB")
    out = np.asarray(rgb, dtype=np.float64)
    for face in faces:
        affine = similarity_transform(face.landmarks, FACE_TEMPLATE * (FACE_SIZE / 512))
        crop = _warp(rgb, affine, (FACE_SIZE, FACE_SIZE), BORDER_VALUE)
        out = paste_face(out, restorer.restore_face(crop, weight), affine)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def restorer_name(path: Path) -> str:
    stem = path.stem.lower()
    if "codeformer" in stem:
        return "CodeFormer"
    if "gfpgan" in stem:
        return "GFPGAN"
    return path.stem


class FaceRestorers:
    """The face-restoration models of a folder: a RetinaFace detector and restorers by name; sessions on first
    use, then kept."""

    def __init__(self, folder: Path | None, providers: str | Sequence[str] = "cpu"):
        self.folder = Path(folder) if folder else None
        self.providers = providers
        self._sessions: dict[Path, object] = {}
        self._lock = threading.Lock()

    def _files(self) -> list[Path]:
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.onnx") if p.is_file())

    def detector_path(self) -> Path | None:
        return next((p for p in self._files() if "retinaface" in p.stem.lower()), None)

    def restorer_paths(self) -> dict[str, Path]:
        return {restorer_name(p): p for p in self._files() if "retinaface" not in p.stem.lower()}

    def names(self) -> list[str]:
        return list(self.restorer_paths())

    def _session(self, path: Path):
        from engine.backend import PROVIDER_PRESETS

        with self._lock:
            if path not in self._sessions:
                import onnxruntime as ort

                requested = PROVIDER_PRESETS[self.providers] if isinstance(self.providers, str) else self.providers
                available = set(ort.get_available_providers())
                providers = [p for p in requested if p in available] or ["CPUExecutionProvider"]
                self._sessions[path] = ort.InferenceSession(str(path), providers=providers)
            return self._sessions[path]

    def missing(self, name: str) -> str | None:
        """Why restoring with `name` cannot happen here (None when it can)."""
        if name not in self.restorer_paths():
            where = self.folder if self.folder is not None else "no face-restorers folder"
            have = ", ".join(self.names()) or "none"
            return f"face restoration model {name!r} is not installed in {where} (installed: {have})"
        if self.detector_path() is None:
            return f"no RetinaFace detector (*retinaface*.onnx) in {self.folder}"
        return None

    def restore(self, image: Image.Image, name: str, weight: float = 0.5) -> Image.Image:
        detector = RetinaFaceDetector(self._session(self.detector_path()))
        restorer = FaceRestorer(name, self._session(self.restorer_paths()[name]))
        return restore_faces(image, detector, restorer, weight)
