"""The loaded checkpoints (option sd_checkpoints_limit, A1111 default 1): models load on demand, the least recently
used is evicted beyond the limit, never one a running job uses; /unload-checkpoint and /reload-checkpoint."""

from __future__ import annotations

import threading
import time

import pytest

from service.a1111.sdapi_models import Txt2ImgRequest
from service.runtime.generate import submit
from service.runtime.jobs import Job
from service.runtime.model_cache import PipelineCache
from service.runtime.state import ServerConfig, ServerState
from tests.service.a1111.test_hires_checkpoint import linked_bundle

SMALL = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}


# -- the cache alone -----------------------------------------------------------------------------------------------


def counting_cache(limit: int = 1):
    loads: list[str] = []

    def load(key: str) -> str:
        loads.append(key)
        time.sleep(0.05)
        return f"pipeline {key}"

    settings = {"limit": limit}
    return PipelineCache(load, lambda: settings["limit"]), loads, settings


def keys(cache: PipelineCache) -> list:
    return [key for key, _ in cache.items()]


def test_the_least_recently_used_is_evicted_beyond_the_limit():
    cache, loads, settings = counting_cache(2)
    assert cache.get("a") == "pipeline a"
    cache.get("b")
    cache.get("a")  # a is now the most recently used
    cache.get("c")
    assert keys(cache) == ["a", "c"] and loads == ["a", "b", "c"]
    cache.get("a")
    assert loads == ["a", "b", "c"]  # kept: not loaded again
    settings["limit"] = 1  # the option changed: the next change applies it
    cache.get("b")
    assert keys(cache) == ["b"]
    settings["limit"] = "nonsense"
    cache.get("c")
    assert keys(cache) == ["c"]  # an unreadable limit counts as A1111's default, 1


def test_a_pinned_model_is_never_evicted_and_the_cache_shrinks_when_released():
    cache, loads, _ = counting_cache(1)
    with cache.pinned(["a"]):
        cache.get("a")
        assert cache.get("b") == "pipeline b"  # handed to its caller...
        assert keys(cache) == ["a"]  # ...not kept: a is in use and the limit is 1
        with cache.pinned(["b", "c"]):
            cache.get("b")
            cache.get("c")
            assert keys(cache) == ["a", "b", "c"]  # over the limit while all are in use
        assert keys(cache) == ["a"]
    assert keys(cache) == ["a"]
    cache.get("c")
    assert keys(cache) == ["c"] and cache.most_recent() == ("c", "pipeline c")


def test_a_checkpoint_asked_for_by_two_workers_loads_once():
    cache, loads, _ = counting_cache(1)
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("a"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert got == ["pipeline a"] * 4 and loads == ["a"]


# -- the server ----------------------------------------------------------------------------------------------------

OTHER, THIRD = "sdedge-tiny-b", "sdedge-tiny-c"


@pytest.fixture(scope="module")
def models(demo_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lru") / "models"
    linked_bundle(demo_bundle, folder / OTHER, name=OTHER, source_sha256="b" * 64)
    linked_bundle(demo_bundle, folder / THIRD, name=THIRD, source_sha256="e" * 64)
    return demo_bundle, folder


def server(models, tmp_path, limit: int | None = None, **config) -> ServerState:
    bundle, folder = models
    state = ServerState(ServerConfig(model=bundle, models_dir=folder, options_file=tmp_path / "o.json", **config))
    if limit is not None:
        state.options.update({"sd_checkpoints_limit": limit})
    state.load_default()
    return state


def loads(state: ServerState) -> float:
    return state.metrics.registry.get_sample_value("sdedge_model_load_seconds_count") or 0


def loaded(state: ServerState) -> list[str]:
    return [entry.name for entry in state.models.loaded_entries()]


def gauge(state: ServerState) -> set[str]:
    return {s.labels["model"] for m in state.metrics.registry.collect() if m.name == "sdedge_models_loaded"
            for s in m.samples}


def run(state: ServerState, **fields):
    return submit(state, Txt2ImgRequest(**{**SMALL, **fields}))[0].future.result(120)


def test_limit_1_keeps_one_model_and_an_override_loads_on_demand(models, tmp_path):
    state = server(models, tmp_path)
    try:
        configured = state.options.get("sd_model_checkpoint")
        assert loaded(state) == ["sdedge-tiny"] and loads(state) == 1
        other = state.models.find(OTHER).title
        run(state, override_settings={"sd_model_checkpoint": other})
        # A1111's quirk: the option is restored, the overriding model stays loaded until a job needs another.
        assert state.options.get("sd_model_checkpoint") == configured
        assert loaded(state) == [OTHER] and gauge(state) == {other} and loads(state) == 2
        run(state)
        assert loaded(state) == ["sdedge-tiny"] and loads(state) == 3
    finally:
        state.close()


def test_limit_2_keeps_two_models_and_evicts_the_least_recently_used(models, tmp_path):
    state = server(models, tmp_path, limit=2)
    try:
        titles = {name: state.models.find(name).title for name in ("sdedge-tiny", OTHER, THIRD)}
        run(state, override_settings={"sd_model_checkpoint": titles[OTHER]})
        run(state)  # the configured model: still loaded
        assert loaded(state) == [OTHER, "sdedge-tiny"] and loads(state) == 2
        assert gauge(state) == {titles["sdedge-tiny"], titles[OTHER]}
        run(state, override_settings={"sd_model_checkpoint": titles[THIRD]})
        assert loaded(state) == ["sdedge-tiny", THIRD] and loads(state) == 3  # OTHER was the least recently used
        run(state, override_settings={"sd_model_checkpoint": titles[OTHER]}, override_settings_restore_afterwards=False)
        assert state.options.get("sd_model_checkpoint") == titles[OTHER]  # kept, as A1111
        assert loaded(state) == [THIRD, OTHER]
    finally:
        state.close()


def test_a_hires_checkpoint_is_dropped_after_its_job_with_limit_1_and_kept_with_2(models, tmp_path):
    for limit, expected in ((1, ["sdedge-tiny"]), (2, [OTHER, "sdedge-tiny"])):
        state = server(models, tmp_path / str(limit), limit=limit)
        try:
            run(state, enable_hr=True, hr_scale=1.5, denoising_strength=0.5, hr_second_pass_steps=2,
                hr_checkpoint_name=state.models.find(OTHER).title)
            assert loaded(state) == expected  # the job's own model stays the resident one (A1111 reloads it)
        finally:
            state.close()


def test_a_model_a_running_job_uses_is_not_evicted(models, tmp_path):
    state = server(models, tmp_path, workers=2)
    try:
        other = state.models.find(OTHER).title
        at_step, release = threading.Event(), threading.Event()

        def pause(job: Job) -> None:
            if job.progress.sampling_step == 1 and not at_step.is_set():
                at_step.set()
                assert release.wait(30)

        job = submit(state, Txt2ImgRequest(**SMALL, override_settings={"sd_model_checkpoint": other}), pause)[0]
        assert at_step.wait(60)
        during: list[set] = []

        def look(job: Job) -> None:
            if job.progress.sampling_step == 1:
                during.append(set(loaded(state)))

        # The configured model loads beside it on the other worker: two models over a limit of 1 meanwhile.
        submit(state, Txt2ImgRequest(**SMALL), look)[0].future.result(120)
        assert during[0] == {OTHER, "sdedge-tiny"}
        assert loaded(state) == [OTHER]  # back to the limit: the model in use stays, the other went
        release.set()
        job.future.result(120)
        assert loaded(state) == [OTHER]
    finally:
        state.close()


def test_unload_and_reload_checkpoint(models, tmp_path):
    from fastapi.testclient import TestClient

    from service.http.app import create_app

    state = server(models, tmp_path, limit=2)
    try:
        run(state, override_settings={"sd_model_checkpoint": state.models.find(OTHER).title})
        assert len(loaded(state)) == 2
        with TestClient(create_app(state)) as client:
            assert client.post("/sdapi/v1/unload-checkpoint").json() == {}
            assert loaded(state) == [] and gauge(state) == set()
            assert client.post("/sdapi/v1/reload-checkpoint").json() == {}
            assert loaded(state) == ["sdedge-tiny"]  # the configured checkpoint, as A1111 moves it back
            assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
    finally:
        state.close()
