"""schemathesis against the server's own OpenAPI, every route: whatever a client sends, never a 5xx.

Bounded here (SDEDGE_FUZZ_EXAMPLES per route and mode, default 5); `make fuzz` runs 100 per route and mode (over
2,000 cases) and prints the count. Sizes, steps and scales the fuzzer picks are capped so a case costs
milliseconds, not minutes; every other field is left to it.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.sdapi_server import running_server

EXAMPLES = int(os.environ.get("SDEDGE_FUZZ_EXAMPLES", "5"))

# Upper bounds applied to numbers the fuzzer chose, per route suffix (smaller values go through untouched).
# Keys marked by FILL are also set when absent or null: the API's own defaults (512 px, 50 steps) are slow here.
CAPS = {
    ("txt2img", "img2img"): {"steps": 2, "width": 64, "height": 64, "batch_size": 2, "n_iter": 2,
                             "hr_scale": 2, "hr_second_pass_steps": 2, "hr_resize_x": 128, "hr_resize_y": 128,
                             "firstphase_width": 64, "firstphase_height": 64, "inpaint_full_res_padding": 64},
    ("extra-single-image", "extra-batch-images"): {"upscaling_resize": 2, "upscaling_resize_w": 128,
                                                   "upscaling_resize_h": 128},
}
FILL = {"steps", "width", "height", "upscaling_resize_w", "upscaling_resize_h"}
# The same for query parameters: the task event stream waits up to `wait` seconds (default 10) for a job to appear.
QUERY_CAPS = {("/events",): {"wait": 0.05}}
QUERY_FILL = {"wait"}


def _cap(values: dict, path: str, caps_by_route: dict, fill: set) -> None:
    for suffixes, caps in caps_by_route.items():
        if path.endswith(suffixes):
            for key, limit in caps.items():
                value = values.get(key)
                if value is None and key in fill:
                    values[key] = limit
                elif isinstance(value, int | float) and not isinstance(value, bool) and value > limit:
                    values[key] = limit


def cap(case) -> None:
    if isinstance(case.body, dict):
        _cap(case.body, case.path, CAPS, FILL)
    if any(case.path.endswith(s) for suffixes in QUERY_CAPS for s in suffixes):
        case.query = dict(case.query or {})
        _cap(case.query, case.path, QUERY_CAPS, QUERY_FILL)


@pytest.fixture(scope="module")
def fuzz_server(demo_bundle, tmp_path_factory):
    with running_server(demo_bundle, tmp_path_factory.mktemp("fuzz"), second_model=False) as url:
        yield url


def fuzz(operation, mode: GenerationMode, counts: dict[str, int]) -> list[str]:
    """Up to EXAMPLES generated cases of one operation; the 5xx answers, described. `counts` tallies the cases
    and answers by status class."""
    failures: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case):
        cap(case)
        response = case.call(timeout=120)
        counts["cases"] += 1
        counts[f"{response.status_code // 100}xx"] += 1
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.path} → {response.status_code}: {response.text[:300]}\n"
                            f"{case.as_curl_command()}")

    run()
    return failures


def test_no_server_errors(fuzz_server, capsys):
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")  # every route, /internal and /queue too
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    counts: Counter[str] = Counter()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                failures += fuzz(operation, mode, counts)
            except Unsatisfiable:  # e.g. no invalid input exists for a route without parameters
                continue
    with capsys.disabled():
        print(f"\nfuzz: {len(operations)} operations, {counts['cases']} cases: "
              + ", ".join(f"{counts[k]} {k}" for k in ("2xx", "3xx", "4xx", "5xx") if counts[k]))
    assert counts["cases"] >= len(operations)
    assert not failures, "\n\n".join(failures[:10])
