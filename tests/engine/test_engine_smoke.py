"""The engine runs the demo bundle at sizes that are multiples of 8 but not of 64."""

import numpy as np
import pytest

from engine.plan import GenerationPlan


def make_plan(pipeline, width=64, height=64, steps=4, sampler="Euler", batch_size=1, seeds=(1,)):
    n = len(seeds)
    return GenerationPlan(
        prompts=("a red circle",) * n, negative_prompts=("",) * n, seeds=tuple(seeds), subseeds=tuple(seeds),
        width=width, height=height, steps=steps, cfg_scale=7.0, sampler=sampler, scheduler="automatic",
        batch_size=batch_size, n_iter=n // batch_size,
    )


@pytest.mark.parametrize("width,height", [(64, 64), (72, 136), (1024, 64), (40, 48)])
def test_sizes(demo_pipeline, width, height):
    result = demo_pipeline.txt2img(make_plan(demo_pipeline, width, height, steps=2))
    assert result.images[0].size == (width, height)
    assert np.isfinite(result.latents[0]).all()


def test_same_seed_same_image_and_batch_independence(demo_pipeline):
    alone = demo_pipeline.txt2img(make_plan(demo_pipeline, seeds=(5,), sampler="Euler a"))
    batched = demo_pipeline.txt2img(make_plan(demo_pipeline, seeds=(4, 5), batch_size=2, sampler="Euler a"))
    other = demo_pipeline.txt2img(make_plan(demo_pipeline, seeds=(6,), sampler="Euler a"))
    np.testing.assert_allclose(alone.latents[0], batched.latents[1], atol=1e-5)
    assert np.abs(alone.latents[0] - other.latents[0]).max() > 1e-3
