"""Picture grid of the shapes model: prompts (rows) × samplers (columns), through the engine on a bundle.

    python -m export shapes --out models/sdedge-shapes
    python docs/grid.py --model models/sdedge-shapes --out docs/grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

PROMPTS = (
    "a red circle",
    "a blue square on the left",
    "a green triangle at the top",
    "a yellow circle, black background",
    "a large purple square, gray background",
    "a small orange triangle on the right",
)
# Shown when the engine has them; the grid keeps this order.
PREFERRED_SAMPLERS = ("Euler a", "Euler", "DPM++ 2M", "DPM++ SDE", "Heun", "DDIM", "LMS", "UniPC")
CELL = 128
LABEL_W = 250
HEADER_H = 24


def render_grid(model: Path, seed: int, steps: int, cfg_scale: float, max_samplers: int) -> Image.Image:
    from engine.pipeline import Pipeline
    from engine.plan import GenerationPlan
    from engine.samplers import SAMPLERS

    pipeline = Pipeline.from_path(model, "cpu")
    samplers = [s for s in PREFERRED_SAMPLERS if s in SAMPLERS][:max_samplers]
    grid = Image.new("RGB", (LABEL_W + CELL * len(samplers), HEADER_H + CELL * len(PROMPTS)), "white")
    draw = ImageDraw.Draw(grid)
    for col, sampler in enumerate(samplers):
        draw.text((LABEL_W + col * CELL + 4, 6), sampler, fill="black")
        n = len(PROMPTS)
        plan = GenerationPlan(
            prompts=PROMPTS, negative_prompts=("",) * n, seeds=(seed,) * n, subseeds=(seed,) * n,
            width=64, height=64, steps=steps, cfg_scale=cfg_scale, sampler=sampler, scheduler="automatic",
            batch_size=n,
        )
        for row, image in enumerate(pipeline.txt2img(plan).images):
            cell = image.resize((CELL, CELL), Image.Resampling.NEAREST)
            grid.paste(cell, (LABEL_W + col * CELL, HEADER_H + row * CELL))
    for row, prompt in enumerate(PROMPTS):
        draw.text((6, HEADER_H + row * CELL + CELL // 2 - 6), prompt, fill="black")
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="an sdedge bundle of the shapes model")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("grid.png"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg-scale", type=float, default=7.0)
    parser.add_argument("--max-samplers", type=int, default=8)
    args = parser.parse_args(argv)
    render_grid(args.model, args.seed, args.steps, args.cfg_scale, args.max_samplers).save(args.out)
    print(f"grid written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
