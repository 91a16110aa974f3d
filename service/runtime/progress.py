"""A running job seen from outside: A1111's /progress and /internal/progress (A1111 modules/api/api.py:
Api.progressapi), live previews
with the "Approx cheap" latent → RGB projection (A1111 modules/sd_vae_approx.py: cheap_approximation), and the
task snapshots the SSE stream
sends. REST and gRPC both read progress through here, never from route code.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from service.a1111.encode import encode_image, to_base64
from service.runtime.jobs import Job, JobQueue, JobState

# A1111 modules/sd_vae_approx.py: cheap_approximation: latent channel l → RGB weights K[l][r]; SD1 and SD2
# share a table.
APPROX_CHEAP: dict[str, tuple[tuple[float, float, float], ...]] = {
    "sd1": ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)),
    "sdxl": ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250), (0.1074, 0.0886, -0.0163),
             (-0.3730, -0.2499, -0.2088)),
}

# The `state.job` text A1111's state.begin() sets for each kind of job.
JOB_NAMES = {"txt2img": "scripts_txt2img", "img2img": "scripts_img2img", "extras": "extras"}

_preview_lock = threading.Lock()


def approx_cheap(latent: np.ndarray, architecture: str = "sd1") -> np.ndarray:
    """One latent [4, h, w] → uint8 RGB [h, w, 3] at latent resolution: K-projection, ·0.5+0.5, clamp, ×255,
    truncate (A1111 `cheap_approximation` + `single_sample_to_image`)."""
    coefs = np.asarray(APPROX_CHEAP["sdxl" if architecture == "sdxl" else "sd1"], dtype=np.float32)
    rgb = np.einsum("lxy,lr->xyr", np.asarray(latent, dtype=np.float32), coefs)
    return (255.0 * np.clip(rgb * 0.5 + 0.5, 0.0, 1.0)).astype(np.uint8)


def image_grid(images: list[Image.Image], options: Mapping[str, Any]) -> Image.Image:
    """A1111 `images.image_grid` with its options: rows from `n_rows`, else about √n; white background."""
    n = len(images)
    n_rows = int(options.get("n_rows", -1))
    if n_rows > 0:
        rows = n_rows
    elif n_rows == 0:
        rows = 1
    elif options.get("grid_prevent_empty_spots", False):
        rows = max(1, math.floor(math.sqrt(n)))
        while n % rows != 0:
            rows -= 1
    else:
        rows = round(math.sqrt(n))
    rows = max(1, min(rows, n))
    cols = math.ceil(n / rows)
    w, h = (max(sizes) for sizes in zip(*(im.size for im in images), strict=True))
    grid = Image.new("RGB", (cols * w, rows * h), color=str(options.get("grid_background_color", "#ffffff")))
    for i, im in enumerate(images):
        dx = 0 if im.width == w else (w - im.width) // 2
        dy = 0 if im.height == h else (h - im.height) // 2
        grid.paste(im, box=(i % cols * w + dx, i // cols * h + dy))
    return grid


def preview_of(latents: np.ndarray, options: Mapping[str, Any], architecture: str) -> Image.Image:
    """The live preview of a batch of latents: the first image, or all of them as a grid."""
    images = [Image.fromarray(approx_cheap(x, architecture), mode="RGB") for x in latents]
    if options.get("show_progress_grid", True) and len(images) > 1:
        return image_grid(images, options)
    return images[0]


def refresh_preview(job: Job, options: Mapping[str, Any], architecture: str) -> None:
    """Decode a new preview when `show_progress_every_n_steps` steps passed since the last one (A1111
    `set_current_image`: lazily, when a client asks). Every method of `show_progress_type` is served by the
    cheap projection (docs/compatibility.md)."""
    every = int(options.get("show_progress_every_n_steps", 10))
    if not options.get("live_previews_enable", True) or every == -1:
        return
    with _preview_lock:
        p, pv = job.progress, job.preview
        latents = p.latents
        if latents is None or latents.ndim != 4 or latents.shape[1] != 4:
            return
        since = pv.step if pv.job_no == p.job_no else 0  # a new batch counts from 0 (A1111 `nextjob`)
        if p.sampling_step - since < every or (pv.image is not None and (pv.job_no, pv.step) == (p.job_no,
                                                                                                  p.sampling_step)):
            return
        pv.image = preview_of(latents, options, architecture)
        pv.id += 1
        pv.job_no, pv.step = p.job_no, p.sampling_step


def job_architecture(job: Job | None, fallback: str) -> str:
    """The latent family `job` samples in (its checkpoint's), for its previews; `fallback` when it has none (a
    load or extras job, or idle). With `--workers` or several loaded models the most recent model may be another's."""
    entry = getattr(getattr(job, "payload", None), "entry", None)
    latent_space = getattr(entry, "latent_space", None)
    return latent_space[0] if latent_space else fallback


def job_name(job: Job) -> str:
    return JOB_NAMES.get(job.kind, job.kind)


def state_dict(job: Job | None, running: bool) -> dict[str, Any]:
    """A1111 `state.dict()`. Idle, `job` is "" and `job_count` 0; the other fields keep the last job's values."""
    if job is None:
        return {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
                "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    p = job.progress
    return {
        "skipped": job.skipped,
        "interrupted": job.interrupted,
        "stopping_generation": False,
        "job": job_name(job) if running else "",
        "job_count": p.job_count if running else 0,
        "job_timestamp": p.job_timestamp,
        "job_no": p.job_no,
        "sampling_step": p.sampling_step,
        "sampling_steps": p.sampling_steps,
    }


def fraction_done(job: Job) -> float:
    """job_no/job_count + (1/job_count)·step/steps, unclamped (0 while the work is not counted yet)."""
    p = job.progress
    if p.job_count <= 0:
        return 0.0
    done = p.job_no / p.job_count
    if p.sampling_steps > 0:
        done += p.sampling_step / p.sampling_steps / p.job_count
    return done


def progress_response(queue: JobQueue, options: Mapping[str, Any], architecture: str,
                      skip_current_image: bool = False) -> dict[str, Any]:
    """GET /sdapi/v1/progress. Idle (and right after a job) progress is 0; running it carries A1111's 0.01
    offset, so clients that wait for `progress == 0 and job_count == 0` see the end of the job."""
    job = queue.current
    if job is None or job.progress.job_count == 0:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state_dict(queue.last, running=False),
                "current_image": None, "textinfo": None, "current_task": None}
    progress = 0.01 + fraction_done(job)
    elapsed = time.time() - (job.progress.time_start or time.time())
    eta_relative = elapsed / progress - elapsed
    refresh_preview(job, options, architecture)
    image = job.preview.image
    current_image = None
    if image is not None and not skip_current_image:
        fmt = str(options.get("samples_format", "png"))
        current_image = to_base64(encode_image(image, fmt, None, int(options.get("jpeg_quality", 80))))
    return {"progress": min(progress, 1.0), "eta_relative": eta_relative, "state": state_dict(job, running=True),
            "current_image": current_image, "textinfo": job.progress.textinfo, "current_task": job.id}


def data_url(image: Image.Image, fmt: str) -> str:
    """A live preview as /internal/progress sends it: `data:image/<fmt>;base64,...`."""
    out = io.BytesIO()
    if fmt == "png":
        # A1111: optimize only small images, it is slow on large ones.
        kwargs: dict[str, Any] = {"optimize": True} if max(image.size) <= 256 else {"compress_level": 1}
    else:
        kwargs = {}
        if fmt == "jpeg" and image.mode in ("RGBA", "P"):
            image = image.convert("RGB")
    image.save(out, format=fmt.upper(), **kwargs)
    return f"data:image/{fmt};base64,{to_base64(out.getvalue())}"


def internal_progress(queue: JobQueue, options: Mapping[str, Any], architecture: str, id_task: str | None,
                      id_live_preview: int = -1, live_preview: bool = True) -> dict[str, Any]:
    """POST /internal/progress: one task's state; a preview only when it differs from the client's."""
    job = next((j for j in queue.running() if j.id == id_task), None)  # any worker's job
    active = job is not None and id_task is not None
    pending = [j.id for j in queue.pending()]
    queued = id_task in pending
    completed = any(j.id == id_task and j.state == JobState.DONE for j in queue.recent())
    if not active:
        textinfo = f"In queue: {pending.index(id_task) + 1}/{len(pending)}" if queued else "Waiting..."
        return {"active": False, "queued": queued, "completed": completed, "progress": None, "eta": None,
                "live_preview": None, "id_live_preview": -1, "textinfo": textinfo}
    progress = min(fraction_done(job), 1.0)
    elapsed = time.time() - (job.progress.time_start or time.time())
    eta = elapsed / progress - elapsed if progress > 0 else None
    preview = None
    if options.get("live_previews_enable", True) and live_preview:
        refresh_preview(job, options, architecture)
        if job.preview.id != id_live_preview and job.preview.image is not None:
            preview = data_url(job.preview.image, str(options.get("live_previews_image_format", "png")))
            id_live_preview = job.preview.id
    return {"active": True, "queued": False, "completed": False, "progress": progress, "eta": eta,
            "live_preview": preview, "id_live_preview": id_live_preview, "textinfo": job.progress.textinfo}


def task_snapshot(queue: JobQueue, job: Job) -> dict[str, Any]:
    """One SSE `progress` event of a task (sdedge's own stream, docs/api.md)."""
    p = job.progress
    running = job.state == JobState.RUNNING
    return {
        "id": job.id,
        "state": job.state.value,
        "position": queue.position(job),
        "job": job_name(job),
        "job_no": p.job_no,
        "job_count": p.job_count,
        "sampling_step": p.sampling_step,
        "sampling_steps": p.sampling_steps,
        "progress": min(fraction_done(job), 1.0) if running else (1.0 if job.state == JobState.DONE else 0.0),
        "interrupted": job.interrupted,
        "skipped": job.skipped,
    }
