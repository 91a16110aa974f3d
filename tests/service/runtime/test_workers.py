"""`--workers N` (issue 17): N jobs of the one FIFO run at once, each with the bytes it gets alone; progress,
interrupt, metrics, drain and batching stay correct; what the workers share (workers.py) waits when it must."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from service.a1111.sdapi_models import Txt2ImgRequest
from service.runtime.generate import submit
from service.runtime.jobs import Job, JobQueue, JobState
from service.runtime.progress import internal_progress
from service.runtime.state import ServerConfig, ServerState
from service.runtime.workers import PipelineModes, RunningBudget, threads_per_worker

BASE = {"prompt": "a red circle", "negative_prompt": "blue", "width": 64, "height": 64, "steps": 12,
        "sampler_name": "Euler a"}


def wait_until(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def pixels(result) -> list[bytes]:
    return [np.asarray(image).tobytes() for image in result.images]


def holding_job(started: threading.Event, release: threading.Event, kind: str = "hold") -> Job:
    def run(job: Job):
        started.set()
        assert release.wait(30)
        return job.id

    return Job(kind=kind, run=run)


# -- the rule for threads ----------------------------------------------------------------------------------------


def test_threads_per_worker_never_oversubscribes_the_cores():
    assert threads_per_worker(1, cores=8) == 0  # one worker: ORT's own default, as before --workers existed
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(2, cores=8) == 4
    assert threads_per_worker(3, cores=8) == 2
    assert threads_per_worker(4, cores=2) == 1  # at least one thread each
    for workers in range(2, 9):
        for cores in range(workers, 17):
            assert workers * threads_per_worker(workers, cores) <= cores


# -- the queue ---------------------------------------------------------------------------------------------------


def test_two_workers_run_two_jobs_at_once_and_report_them():
    q = JobQueue(workers=2)
    try:
        starts = [threading.Event(), threading.Event()]
        release = threading.Event()
        a = q.submit(holding_job(starts[0], release))
        b = q.submit(holding_job(starts[1], release))
        third = q.submit(holding_job(threading.Event(), release))
        assert starts[0].wait(10) and starts[1].wait(10)  # a second job runs before the first ends
        assert {j.id for j in q.running()} == {a.id, b.id}
        assert third.state == JobState.QUEUED and q.position(third) == 1
        assert q.current is a  # /progress shows the job that started first
        assert q.healthy() and not q.idle()
        q.interrupt_current()  # A1111's /interrupt: everything running stops
        assert a.interrupted and b.interrupted and not third.interrupted
        release.set()
        assert third.future.result(10) == third.id
        wait_until(q.idle)
        assert [j.id for j in (a, b, third)] == [q.get(i).id for i in (a.id, b.id, third.id)]
    finally:
        q.close()


def test_cancel_by_task_id_stops_only_that_job():
    q = JobQueue(workers=2)
    try:
        starts = [threading.Event(), threading.Event()]
        release = threading.Event()
        a = q.submit(holding_job(starts[0], release))
        b = q.submit(holding_job(starts[1], release))
        assert starts[0].wait(10) and starts[1].wait(10)
        q.cancel(b)
        assert b.interrupted and not a.interrupted
        release.set()
        a.future.result(10), b.future.result(10)
    finally:
        q.close()


def test_a_job_that_kills_its_worker_fails_alone_while_the_other_worker_runs_on():
    q = JobQueue(workers=2, watch_every=0.02)
    try:
        started, release = threading.Event(), threading.Event()
        long = q.submit(holding_job(started, release))
        assert started.wait(10)

        def die(job: Job):
            raise SystemExit("worker thread killed")  # a BaseException: fails the job only

        assert isinstance(q.submit(Job(kind="txt2img", run=die)).future.exception(10), Exception)
        release.set()
        assert long.future.result(10) == long.id
        assert q.submit(Job(kind="txt2img", run=lambda job: "ok")).future.result(10) == "ok"
        assert q.healthy()
    finally:
        q.close()


def test_each_running_job_has_its_own_deadline():
    q = JobQueue(workers=2, timeout=lambda: 0.3, watch_every=0.02)
    try:
        def slow(job: Job):
            while not job.should_stop():
                time.sleep(0.01)
            return "stopped"

        jobs = [q.submit(Job(kind="txt2img", run=slow)) for _ in range(2)]
        for job in jobs:
            assert job.future.exception(10) is not None  # JobTimeout
            assert job.timed_out
    finally:
        q.close()


# -- what the workers share ----------------------------------------------------------------------------------------


def test_a_job_in_another_pipeline_mode_waits_for_the_running_ones():
    modes = PipelineModes()
    order: list[str] = []
    with modes.hold([("model-a", "vae-1")]):
        with modes.hold([("model-a", "vae-1"), ("model-b", "vae-2")]):  # the same mode shares
            order.append("shared")
        def other() -> None:
            with modes.hold([("model-a", "vae-2")]):
                order.append("other")

        waiter = threading.Thread(target=other)
        waiter.start()
        time.sleep(0.2)
        assert order == ["shared"]  # model-a runs with vae-1: vae-2 waits
        with modes.hold([("model-c", "vae-2")]):  # another checkpoint is free
            order.append("model-c")
    waiter.join(5)
    assert order == ["shared", "model-c", "other"]


def test_the_memory_budget_counts_every_running_job():
    budget = RunningBudget()
    entered = threading.Event()
    with budget.reserve(6, 10):
        with budget.reserve(4, 10):  # 6 + 4 fits
            assert budget.used == 10

        def second():
            with budget.reserve(6, 10):
                entered.set()

        t = threading.Thread(target=second)
        t.start()
        assert not entered.wait(0.2)  # 6 + 6 > 10: waits for the first job
    assert entered.wait(5)
    t.join(5)
    with budget.reserve(50, 10):  # alone, a job always starts (admission refused what can never fit)
        assert budget.used == 50
    assert budget.used == 0


def test_what_an_abandoned_job_holds_makes_no_one_wait():
    class Owner:
        _finalized = False

    stuck = Owner()
    modes, budget = PipelineModes(), RunningBudget()
    with modes.hold([("model-a", "vae-1")], stuck), budget.reserve(8, 10, stuck):
        entered = threading.Event()

        def next_job() -> None:
            with modes.hold([("model-a", "vae-2")], Owner()), budget.reserve(8, 10, Owner()):
                entered.set()

        t = threading.Thread(target=next_job)
        t.start()
        assert not entered.wait(0.3)
        stuck._finalized = True  # the watchdog abandoned it; its thread never returns
        assert entered.wait(5)
        t.join(5)


# -- real jobs -----------------------------------------------------------------------------------------------------


def state_for(bundle, tmp_path, **config) -> ServerState:
    state = ServerState(ServerConfig(model=bundle, models_dir=tmp_path / "models", options_file=tmp_path / "o.json",
                                     **config))
    state.load_default()
    return state


REQUESTS = [{"seed": 21}, {"seed": 22, "batch_size": 2}, {"seed": 23}, {"seed": 24}]


@pytest.fixture(scope="module")
def alone(demo_bundle, tmp_path_factory) -> list[list[bytes]]:
    """Each request run alone on a one-worker server."""
    state = state_for(demo_bundle, tmp_path_factory.mktemp("alone"))
    try:
        return [pixels(submit(state, Txt2ImgRequest(**BASE, **r))[0].future.result(120)) for r in REQUESTS]
    finally:
        state.close()


def test_two_workers_overlap_in_time_and_give_the_bytes_of_each_job_alone(demo_bundle, tmp_path, alone):
    state = state_for(demo_bundle, tmp_path, workers=2)
    try:
        assert state.models.choice.threads == threads_per_worker(2)
        running_seen: list[float] = []

        def listener(job: Job) -> None:
            if job.progress.sampling_step == 3:
                running_seen.append(state.metrics.registry.get_sample_value("sdedge_jobs_running"))

        jobs = [submit(state, Txt2ImgRequest(**BASE, **r), listener)[0] for r in REQUESTS]
        results = [job.future.result(120) for job in jobs]
        assert [pixels(r) for r in results] == alone
        spans = [(job.progress.time_start, job.finished_at) for job in jobs]
        # The second job started before the first ended: two jobs ran at the same time.
        assert spans[1][0] < spans[0][1] and spans[0][0] < spans[1][1]
        assert max(running_seen) == 2  # the gauge counted both
        wait_until(state.queue.idle)
        assert state.metrics.registry.get_sample_value("sdedge_jobs_running") == 0
    finally:
        state.close()


def test_internal_progress_follows_a_job_on_any_worker(demo_bundle, tmp_path):
    state = state_for(demo_bundle, tmp_path, workers=2)
    try:
        started, release = threading.Event(), threading.Event()
        hold = state.queue.submit(holding_job(started, release))
        assert started.wait(10)
        seen: list[dict] = []

        def listener(job: Job) -> None:
            if job.progress.sampling_step == 2 and not seen:
                seen.append(internal_progress(state.queue, {}, "sd1", job.id, live_preview=False))

        job = submit(state, Txt2ImgRequest(**BASE, seed=5), listener)[0]
        job.future.result(120)
        assert state.queue.current is hold  # /progress keeps showing the job that started first
        assert seen and seen[0]["active"] and seen[0]["progress"] > 0
        release.set()
    finally:
        state.close()


def test_batching_with_two_workers_gives_every_job_its_own_bytes_once(demo_bundle, tmp_path, alone):
    state = state_for(demo_bundle, tmp_path, workers=2, batch_max=8)
    try:
        starts = [threading.Event(), threading.Event()]
        release = threading.Event()
        for event in starts:  # both workers busy, so the requests wait together
            state.queue.submit(holding_job(event, release))
        assert all(event.wait(10) for event in starts)
        ended: list[str] = []
        state.queue.on_end.append(lambda job: ended.append(job.id))
        jobs = [submit(state, Txt2ImgRequest(**BASE, **r))[0] for r in REQUESTS]
        release.set()
        results = [job.future.result(120) for job in jobs]
        assert [pixels(r) for r in results] == alone
        ids = {job.id for job in jobs}
        # A job's caller gets its result just before the on_end hooks run: wait for every end, then none twice.
        wait_until(lambda: ids <= set(ended))
        wait_until(state.queue.idle)
        assert sorted(j for j in ended if j in ids) == sorted(ids)
    finally:
        state.close()


def test_drain_waits_for_every_running_job(demo_bundle, tmp_path):
    from service.runtime.drain import Drain

    state = state_for(demo_bundle, tmp_path, workers=2)
    try:
        starts = [threading.Event(), threading.Event()]
        releases = [threading.Event(), threading.Event()]
        held = [state.queue.submit(holding_job(s, r)) for s, r in zip(starts, releases, strict=True)]
        assert all(event.wait(10) for event in starts)
        done = threading.Event()
        drain = Drain(state, timeout=30, on_done=done.set, poll=0.01)
        drain.begin()
        threading.Thread(target=drain.run, daemon=True).start()
        releases[0].set()
        assert held[0].future.result(10) == held[0].id
        assert not done.wait(0.3)  # the second worker's job still runs
        releases[1].set()
        assert done.wait(10)
        assert held[1].future.result(1) == held[1].id
    finally:
        state.close()


def test_the_workers_flag(capsys):
    from service.cli.commands import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve"]).workers == 1
    assert parser.parse_args(["serve", "--workers", "3"]).workers == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--workers", bad])
    assert "--workers" in capsys.readouterr().err


def test_both_doors_interrupt_every_running_job_and_grpc_one_by_task_id(demo_bundle, tmp_path):
    import grpc
    from fastapi.testclient import TestClient

    from service.generated import sdedge_pb2 as pb
    from service.generated import sdedge_pb2_grpc as pb_grpc
    from service.http.app import create_app
    from service.rpc.server import GrpcConfig, GrpcServer

    state = state_for(demo_bundle, tmp_path, workers=2)
    server = GrpcServer(state, GrpcConfig(port=0))
    channel = grpc.insecure_channel(f"127.0.0.1:{server.start()}")
    stub = pb_grpc.SdEdgeStub(channel)
    try:
        with TestClient(create_app(state)) as client:
            rounds = [(lambda jobs: client.post("/sdapi/v1/interrupt"), [True, True]),
                      (lambda jobs: stub.Interrupt(pb.InterruptRequest()), [True, True]),
                      (lambda jobs: stub.Interrupt(pb.InterruptRequest(task_id=jobs[1].id)), [False, True])]
            for interrupt, expected in rounds:
                starts = [threading.Event(), threading.Event()]
                release = threading.Event()
                jobs = [state.queue.submit(holding_job(event, release)) for event in starts]
                assert all(event.wait(10) for event in starts)
                interrupt(jobs)
                assert [job.interrupted for job in jobs] == expected
                release.set()
                wait_until(state.queue.idle)
    finally:
        channel.close()
        server.stop(grace=None)
        state.close()


def test_previews_use_the_latent_family_of_the_job_shown():
    from types import SimpleNamespace

    from service.runtime.progress import job_architecture

    def job(latent_space):
        return Job(kind="txt2img", run=lambda j: None, payload=SimpleNamespace(entry=SimpleNamespace(
            latent_space=latent_space)))

    assert job_architecture(job(("sdxl", 4, 8)), "sd1") == "sdxl"  # not the most recently loaded model's
    assert job_architecture(job(("sd1", 4, 8)), "sdxl") == "sd1"
    assert job_architecture(Job(kind="load-checkpoint", run=lambda j: None), "sdxl") == "sdxl"
    assert job_architecture(None, "sd1") == "sd1"
