"""Progress as A1111 reports it (A1111 modules/api/api.py: Api.progressapi), the "Approx cheap" preview (A1111
modules/sd_vae_approx.py: cheap_approximation), and the
job/pipeline contract for interrupt and skip: an interrupt drops the remaining batches, a skip only its own."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from service.a1111.sdapi_models import Txt2ImgRequest
from service.a1111.translate import plan_txt2img
from service.runtime.jobs import Job, JobQueue
from service.runtime.options import DEFAULTS
from service.runtime.progress import approx_cheap, image_grid, internal_progress, progress_response

# A1111 modules/sd_vae_approx.py: cheap_approximation, typed from the spec.
SD1 = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
SDXL = [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163], [-0.3730, -0.2499, -0.2088]]


@pytest.mark.parametrize("architecture, table", [("sd1", SD1), ("sdxl", SDXL)])
def test_approx_cheap_matches_a1111(architecture, table):
    latent = np.random.default_rng(0).normal(0, 1.5, (4, 5, 7)).astype(np.float32)
    # A1111: einsum("...lxy,lr -> ...rxy"), ·0.5+0.5, clamp, 255·, moveaxis to HWC, uint8 truncation.
    x = torch.einsum("lxy,lr -> rxy", torch.from_numpy(latent), torch.tensor(table)) * 0.5 + 0.5
    expected = (255.0 * np.moveaxis(torch.clamp(x, 0.0, 1.0).numpy(), 0, 2)).astype(np.uint8)
    got = approx_cheap(latent, architecture)
    assert got.shape == (5, 7, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # float32 summation order only


def test_image_grid_layout():
    images = [Image.new("RGB", (4, 3), c) for c in ("red", "green", "blue")]
    grid = image_grid(images, DEFAULTS)
    assert grid.size == (8, 6)  # rows = round(√3) = 2, cols = 2
    assert [grid.getpixel(p) for p in ((0, 0), (4, 0), (0, 3), (4, 3))] == [
        (255, 0, 0), (0, 128, 0), (0, 0, 255), (255, 255, 255)]


class Gate:
    """A job body the test steps through: it waits at each `hold()` until released."""

    def __init__(self):
        self.go = threading.Event()
        self.at = threading.Event()

    def hold(self):
        self.at.set()
        self.go.wait(10)
        self.go.clear()

    def release(self):
        self.at.clear()
        self.go.set()


def test_progress_lifecycle():
    queue = JobQueue(max_pending=4)
    gate = Gate()

    def run(job: Job):
        gate.hold()  # started, nothing counted yet: A1111's job_count -1
        p = job.progress
        p.job_no, p.job_count, p.sampling_step, p.sampling_steps = 1, 2, 5, 10
        gate.hold()
        return "ok"

    try:
        idle = progress_response(queue, DEFAULTS, "sd1")
        assert idle["progress"] == 0 and idle["state"]["job_timestamp"] == "0" and idle["current_task"] is None
        job = queue.submit(Job(kind="txt2img", run=run, id="task(a)"))
        waiting = queue.submit(Job(kind="txt2img", run=lambda j: None, id="task(b)"))
        assert gate.at.wait(10)
        early = progress_response(queue, DEFAULTS, "sd1")
        assert early["state"]["job_count"] == -1 and early["progress"] == pytest.approx(0.01)
        assert early["current_task"] == "task(a)" and early["state"]["job"] == "scripts_txt2img"
        queued = internal_progress(queue, DEFAULTS, "sd1", "task(b)")
        assert queued["queued"] and queued["textinfo"] == "In queue: 1/1" and queued["id_live_preview"] == -1
        gate.release()
        assert gate.at.wait(10)
        mid = progress_response(queue, DEFAULTS, "sd1")
        assert mid["progress"] == pytest.approx(0.01 + 1 / 2 + 1 / 2 * 5 / 10) and mid["eta_relative"] >= 0
        assert internal_progress(queue, DEFAULTS, "sd1", "task(a)")["progress"] == pytest.approx(0.75)
        queue.interrupt_current()
        assert job.should_stop() and job.should_stop()  # an interrupt stays
        gate.release()
        assert job.future.result(10) == "ok" and waiting.future.result(10) is None
        after = progress_response(queue, DEFAULTS, "sd1")
        # Idle again; the last job's counters and flags stay visible as in A1111's state.
        assert after["progress"] == 0 and after["state"]["job_count"] == 0 and after["state"]["job"] == ""
        assert after["state"]["interrupted"] is False  # task(b) ran last and was not interrupted
        assert after["state"]["job_timestamp"] != "0"
        assert internal_progress(queue, DEFAULTS, "sd1", "task(a)")["completed"] is True
        assert [job_id for _, job_id in queue.started] == ["task(a)", "task(b)"]
    finally:
        gate.release()
        queue.close()


def test_watching_a_task_before_it_is_submitted():
    queue = JobQueue(max_pending=4)
    seen: list[tuple[str, str]] = []
    try:
        def listener(job: Job) -> None:
            seen.append((job.id, job.state.value))

        assert queue.watch("task(w)", listener) is None
        queue.unwatch("task(gone)", listener)  # unknown ids are fine
        assert queue.watch("task(u)", listener) is None
        queue.unwatch("task(u)", listener)
        gate = Gate()

        def run(job: Job):
            gate.hold()
            return "ok"

        queue.submit(Job(kind="txt2img", run=lambda j: None, id="task(u)"))
        job = queue.submit(Job(kind="txt2img", run=run, id="task(w)"))
        assert gate.at.wait(10)
        gate.release()
        assert job.future.result(10) == "ok"
        deadline = time.time() + 10
        while ("task(w)", "done") not in seen and time.time() < deadline:  # told just after the result is set
            time.sleep(0.01)
        # Queued first (at submission), then running, then done; the unwatched task told nothing.
        assert [state for task, state in seen if task == "task(w)"] == ["queued", "running", "done"]
        assert not [task for task, _ in seen if task == "task(u)"]
        finished = queue.watch("task(w)", listener)
        assert finished is not None and finished.state.value == "done" and finished.listeners == []
    finally:
        queue.close()


def test_skip_is_used_up_by_one_poll():
    job = Job(kind="txt2img", run=lambda j: None)
    job.skip()
    assert job.should_stop() is True and job.should_stop() is False and job.skipped is True


def _plan(pipeline, n_iter: int):
    req = Txt2ImgRequest(prompt="a", seed=3, steps=3, width=64, height=64, n_iter=n_iter, sampler_name="Euler")
    return plan_txt2img(req, DEFAULTS)


@pytest.mark.parametrize("action, images", [("skip", 3), ("interrupt", 1)])
def test_pipeline_skip_and_interrupt(demo_pipeline, action, images):
    plan = _plan(demo_pipeline, 3)
    full = demo_pipeline.txt2img(plan)
    job = Job(kind="txt2img", run=lambda j: None)

    def on_step(event):
        if event.job_no == 0 and event.step == 1:
            getattr(job, action)()

    result = demo_pipeline.txt2img(plan, on_step=on_step, should_stop=job.should_stop)
    assert result.interrupted and len(result.images) == images
    assert not np.array_equal(np.asarray(result.images[0]), np.asarray(full.images[0]))  # ended early
    for got, want in zip(result.images[1:], full.images[1:], strict=False):
        assert np.array_equal(np.asarray(got), np.asarray(want))  # the batches after a skip run untouched
