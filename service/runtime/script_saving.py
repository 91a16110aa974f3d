"""`save_images` for a selectable script: which of its cells save their own samples and batch grids, and the
images the script itself writes afterwards, as A1111's built-in scripts do (scripts/xyz_grid.py,
prompt_matrix.py, prompts_from_file.py, sd_upscale.py, loopback.py: `images.save_image` calls in run()).

| script | each cell (process_images) | the script itself |
|---|---|---|
| X/Y/Z plot | samples and batch grid | the plot, then each Z value's sub-grid (with a Z axis), `xyz_grid-NNNN-<seed>` in the grids folder, with their infotexts |
| Prompt matrix | samples (`do_not_save_grid = True`) | the matrix, `prompt_matrix-NNNN-<seed>`, grids folder, no infotext |
| Prompts from file | samples (`do_not_save_grid = True`) | nothing |
| SD upscale | nothing (`do_not_save_samples/grid = True`) | each combined image as a sample, with the first tile's infotext |
| Loopback | samples (`do_not_save_grid = True`), with the script's entries | the history, `grid-NNNN`, grids folder, no infotext |

A1111 gates the script's own writes on options `grid_save` / `samples_save` only, so its API writes them even
with `save_images: false`; sdedge writes nothing unless the request asks (`save_images`, and not the matching
`do_not_save_*`), like every other file (docs/compatibility.md).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from PIL import Image

from service.a1111 import saving
from service.a1111.filenames import FilenameGenerator
from service.a1111.grids import image_grid
from service.a1111.results import collect_outputs
from service.a1111.scripts.base import CellRun, ScriptOutput
from service.a1111.styles import styles_of
from service.runtime.generate import Generation

log = logging.getLogger(__name__)

# title → (cells save samples, cells save their batch grid)
CELL_SAVES: dict[str, tuple[bool, bool]] = {
    "X/Y/Z plot": (True, True),
    "Prompt matrix": (True, False),
    "Prompts from file or textbox": (True, False),
    "SD upscale": (False, False),
    "Loopback": (True, False),
}


def cell_save(title: str, wanted: saving.SaveRequest) -> saving.SaveRequest:
    samples, grid = CELL_SAVES.get(title, (True, True))
    return saving.SaveRequest(samples=wanted.samples and samples, grid=wanted.grid and grid)


def save_cell(generation: Generation, run: CellRun, result, save: saving.SaveRequest) -> list[str]:
    """A cell's samples (and batch grid) with the infotexts the script gave them (its extra parameters
    included, as A1111's `p.extra_generation_params` are in each process_images' infotext)."""
    if not (save.samples or save.grid):
        return []
    outputs = collect_outputs(generation.reported_plan(), result, generation.entry, generation.options, grid_wanted=save.grid)
    images = [replace(o, infotext=run.infotexts[o.source])
              if o.kind == "sample" and o.source is not None and o.source < len(run.infotexts) else o
              for o in outputs.images]
    saver = replace(generation, save=save, notes={"outputs": (result, replace(outputs, images=images))})
    saver.save_images(result)
    return list(saver.notes.get("warnings") or [])


def _write(generation: Generation, key_kind: str, image: Image.Image, basename: str, seed: int | None,
           prompt: str, info: str | None, grid: bool) -> list[str]:
    """One `images.save_image` call of a script, named from the template cell's `p`."""
    state, options = generation.state, generation.options
    root: Path = state.config.data_dir
    samples_key, grids_key = saving.folder_keys(generation.kind)
    key = grids_key if key_kind == "grid" else samples_key
    styles = styles_of(state).styles
    names = saving.job_names(
        generation.plan, generation.entry.name, generation.entry.short_hash, prompt,
        generation.req.negative_prompt or "", generation.timestamp,
        [s.prompt or "" for name in generation.plan.report.styles if (s := styles.get(name))],
        options.directories_max_prompt_words)
    namegen = FilenameGenerator(names.context, seed, prompt, image, basename=basename)
    try:
        folder = saving.output_folder(root, key, getattr(options, key))
        saving.save_image(image, folder, basename, namegen, options, root,
                          extension=options.grid_format if grid else options.samples_format, info=info,
                          short_filename=grid and basename == "grid" and not options.grid_extended_filename,
                          grid=grid)
    except (OSError, saving.UnsafePath, saving.OptionRefused) as exc:
        log.error("could not save the %s of the script: %s", basename or "image", exc)
        return [f"could not save {basename or 'an image'}: {exc}"]
    return []


def save_script_outputs(title: str, output: ScriptOutput, template: Generation, save: saving.SaveRequest,
                        prompt: str, seed: int | None) -> list[str]:
    """The images the script writes itself after its cells (see the table above)."""
    options = template.options
    warnings: list[str] = []
    images = output.images
    if title == "X/Y/Z plot" and save.grid and options.grid_save and images:
        first_prompt = (output.all_prompts or [prompt])[0]
        first_seed = (output.all_seeds or [seed])[0]
        warnings += _write(template, "grid", images[0], "xyz_grid", first_seed, first_prompt or "",
                           output.infotexts[0] if output.infotexts else None, grid=True)
        for image, infotext, sub_prompt, sub_seed in output.sub_grids:
            warnings += _write(template, "grid", image, "xyz_grid", sub_seed, sub_prompt or "", infotext, grid=True)
    elif title == "Prompt matrix" and save.grid and options.grid_save and output.index_of_first_image == 1:
        first_seed = (output.all_seeds or [seed])[0]
        warnings += _write(template, "grid", images[0], "prompt_matrix", first_seed, prompt, None, grid=True)
    elif title == "SD upscale" and save.samples and options.samples_save:
        for n, image in enumerate(images):
            start = None if seed is None else seed + n
            info = output.infotexts[n] if n < len(output.infotexts) else None
            warnings += _write(template, "sample", image, "", start, prompt, info, grid=False)
    elif title == "Loopback" and save.grid and options.grid_save:
        # The grid of the history (A1111 saves it whether or not return_grid puts it in the response).
        has_grid = bool(images) and output.png_infotexts[0] is None
        history = images[1:] if has_grid else images
        if len(history) > 1:
            grid = images[0] if has_grid else image_grid(history, rows=1)
            warnings += _write(template, "grid", grid, "grid", seed, prompt, None, grid=True)
    return warnings
