"""Batching of compatible jobs (service/runtime/batching.py): jobs that wait together and differ only in seeds
run as one UNet batch, and each gets the images it gets alone, byte for byte; its own progress and interrupt."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.a1111.sdapi_models import Txt2ImgRequest
from service.runtime.generate import submit
from service.runtime.jobs import Job
from service.runtime.state import ServerConfig, ServerState

BASE = {"prompt": "a red circle", "negative_prompt": "blue", "width": 64, "height": 64, "steps": 6,
        "sampler_name": "Euler a"}


def state_for(bundle, tmp_path, **config) -> ServerState:
    state = ServerState(ServerConfig(model=bundle, models_dir=tmp_path / "models", **config))
    state.load_default()
    return state


def pixels(result) -> list[bytes]:
    return [np.asarray(image).tobytes() for image in result.images]


def unet_calls(state: ServerState) -> float:
    return state.metrics.registry.get_sample_value("sdedge_component_call_seconds_count", {"component": "unet"}) or 0


def hold(state: ServerState) -> threading.Event:
    """Occupy the worker until the returned event is set, so the next submissions wait together."""
    started, release = threading.Event(), threading.Event()

    def run(job: Job):
        started.set()
        release.wait(30)

    state.queue.submit(Job(kind="hold", run=run))
    assert started.wait(10)
    return release


REQUESTS = [{"seed": 10}, {"seed": 11, "batch_size": 2}, {"seed": 13}, {"seed": 14}]


@pytest.fixture(scope="module")
def alone(demo_bundle, tmp_path_factory) -> list[list[bytes]]:
    state = state_for(demo_bundle, tmp_path_factory.mktemp("alone"))
    try:
        return [pixels(submit(state, Txt2ImgRequest(**BASE, **r))[0].future.result(60)) for r in REQUESTS]
    finally:
        state.close()


def test_compatible_jobs_run_as_one_batch_with_the_images_they_get_alone(demo_bundle, tmp_path, alone):
    state = state_for(demo_bundle, tmp_path, batch_max=8)
    try:
        release = hold(state)
        steps_seen: dict[int, list[int]] = {i: [] for i in range(len(REQUESTS))}
        jobs = []
        for i, r in enumerate(REQUESTS):
            listener = (lambda seen: lambda job: seen.append(job.progress.sampling_step))(steps_seen[i])
            jobs.append(submit(state, Txt2ImgRequest(**BASE, **r), listener)[0])
            if i == 1:  # an incompatible job in between (other steps) waits for its own turn
                other = submit(state, Txt2ImgRequest(**{**BASE, "steps": 3}))[0]
        before = unet_calls(state)
        release.set()
        results = [job.future.result(60) for job in jobs]
        other.future.result(60)
        assert [pixels(r) for r in results] == alone
        assert not any(r.interrupted for r in results)
        # One UNet call per step for the whole batch, then 3 for the incompatible job.
        assert unet_calls(state) - before == BASE["steps"] + 3
        for i in steps_seen:  # each job reported its own progress, every step
            seen = [s for s in steps_seen[i] if s > 0]
            assert seen == sorted(seen) and sorted(set(seen)) == list(range(1, BASE["steps"] + 1))
        assert state.metrics.registry.get_sample_value("sdedge_images_generated_total") == 5 + 1
    finally:
        state.close()


def test_members_interrupted_alone_leave_with_their_partial_images_and_the_rest_are_unchanged(
        demo_bundle, tmp_path, alone):
    state = state_for(demo_bundle, tmp_path, batch_max=8)
    try:
        release = hold(state)

        def interrupt_at_step_2(job: Job) -> None:
            if job.progress.sampling_step == 2:
                job.interrupt()

        # The batch's lead (0) and a rider (2) are interrupted by their own clients.
        jobs = [submit(state, Txt2ImgRequest(**BASE, **r), interrupt_at_step_2 if i in (0, 2) else None)[0]
                for i, r in enumerate(REQUESTS)]
        release.set()
        results = [job.future.result(60) for job in jobs]
        for i in (0, 2):
            assert results[i].interrupted and len(results[i].images) == 1
            assert pixels(results[i]) != alone[i]  # 2 of 6 steps
        for i in (1, 3):
            assert not results[i].interrupted and pixels(results[i]) == alone[i]
    finally:
        state.close()


def test_batching_off_by_default_and_never_for_different_prompts(demo_bundle, tmp_path):
    state = state_for(demo_bundle, tmp_path)
    assert state.batcher is None
    state.close()
    state = state_for(demo_bundle, tmp_path, batch_max=8)
    try:
        release = hold(state)
        jobs = [submit(state, Txt2ImgRequest(**{**BASE, "prompt": p}))[0] for p in ("a circle", "a long prompt, x")]
        before = unet_calls(state)
        release.set()
        [job.future.result(60) for job in jobs]
        assert unet_calls(state) - before == 2 * BASE["steps"]  # ran one after the other
    finally:
        state.close()
