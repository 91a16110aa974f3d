"""Images written to the server's output folders as A1111 writes them with `save_images: true` (A1111
modules/images.py: save_image, save_image_with_geninfo; modules/processing.py: process_images_inner).

Samples go to option `outdir_txt2img_samples` / `outdir_img2img_samples` (A1111's API ignores `outdir_samples`),
grids to `outdir_txt2img_grids` / `outdir_img2img_grids`, each in a `[date]` subfolder (`save_to_dirs`,
`directories_filename_pattern`), named `00000-<seed>.png` (`samples_filename_pattern`, sequence numbers), with
the infotext inside the file (PNG `parameters` chunk, EXIF UserComment for JPEG/WebP) and optionally beside it
(`save_txt`).

Unlike A1111, every path stays inside one output root (`sdedge serve --data-dir`, default the working folder):
relative option values are taken from it, an absolute folder or a pattern that leads outside it is refused
before the job runs (`OptionRefused`), and a symlink leading outside is not followed (the file is not written,
the response says so). Files are written to a temporary name and renamed, so a watcher never sees half a file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from engine.pipeline import GenerationResult
from engine.plan import GenerationPlan
from engine.samplers import SAMPLERS
from service.a1111.encode import encode_image
from service.a1111.errors import OptionRefused
from service.a1111.filenames import (
    FilenameGenerator,
    NameContext,
    get_next_sequence_number,
    literal_parts,
    scheduler_tag,
)
from service.a1111.job_options import JobOptions
from service.a1111.results import OutputImage, Outputs, mask_images
from service.a1111.sampler_names import get_sampler_and_scheduler

log = logging.getLogger(__name__)

# Sequence numbers are read from the folder and then taken: one writer at a time.
_lock = threading.Lock()

# mkstemp makes 0600 files; saved images get the permissions a plain open() gives (read once, at import).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK

# JPEG and WebP cannot hold larger images; A1111 switches to PNG (modules/images.py: save_image).
_MAX_SIDE = {"jpg": 65535, "jpeg": 65535, "webp": 16383}


class UnsafePath(ValueError):
    """A computed path that would leave the output root (through a symlink, say)."""


@dataclass(frozen=True)
class SaveRequest:
    """What a job saves (the API sets A1111's `do_not_save_samples`/`do_not_save_grid` from `save_images`)."""

    samples: bool
    grid: bool


def save_request(save_images: bool | None, do_not_save_samples: bool | None = False,
                 do_not_save_grid: bool | None = False) -> SaveRequest:
    """A1111's API saves nothing unless `save_images`; then samples and grid (and overwrites both
    `do_not_save_*` fields with `not save_images`). sdedge also honours a `do_not_save_*` sent as true next to
    `save_images` (docs/compatibility.md): a client sending both asks for the one without the other."""
    on = bool(save_images)
    return SaveRequest(samples=on and not do_not_save_samples, grid=on and not do_not_save_grid)


def folder_keys(kind: str) -> tuple[str, str]:
    """The options naming the samples and grids folders of a txt2img or img2img job (A1111 modules/api/api.py
    sets `p.outpath_samples`/`p.outpath_grids` from exactly these)."""
    return f"outdir_{kind}_samples", f"outdir_{kind}_grids"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def output_folder(root: Path, key: str, value: str) -> Path:
    """Option `key`'s folder under `root`; refused (OptionRefused) if it would lie outside it."""
    base = root.resolve()
    folder = Path(os.path.normpath(base / value))  # `value` absolute: itself
    if not _inside(folder, base) or not _inside(folder.resolve(), base):
        raise OptionRefused(f"option {key}={value!r} is outside the output folder {base} (sdedge serve --data-dir): "
                            f"saving there is refused")
    return folder


def check_options(root: Path, kind: str, options: JobOptions, request: SaveRequest) -> None:
    """Before the job runs: the folders and file name patterns it would save with stay inside `root`.

    Tag values are sanitised (no separators), so only a pattern's literal text can lead elsewhere: the folder
    pattern may nest folders (`[date]/[seed]`) but not climb (`..`) or start at `/`; the file pattern may not
    contain a separator at all (A1111 would fail to write such a name).
    """
    if not (request.samples or request.grid):
        return
    samples_key, grids_key = folder_keys(kind)
    for key, wanted in ((samples_key, request.samples), (grids_key, request.grid)):
        if wanted:
            output_folder(root, key, getattr(options, key))
    parts = literal_parts(options.directories_filename_pattern)
    if parts[0].startswith(("/", "\\")) or any(_climbs(text) for text in (*parts, "".join(parts))):
        raise OptionRefused(f"option directories_filename_pattern={options.directories_filename_pattern!r} "
                            "leads outside the output folder: saving there is refused")
    names = "".join(literal_parts(options.samples_filename_pattern))
    if "/" in names or "\\" in names or names.strip() in ("..", "."):
        raise OptionRefused(f"option samples_filename_pattern={options.samples_filename_pattern!r} "
                            "may not contain a path separator")


def _climbs(text: str) -> bool:
    return ".." in text.replace("\\", "/").split("/")


@dataclass(frozen=True)
class SavedFile:
    path: Path
    txt_path: Path | None = None
    downscaled: Path | None = None  # export_for_4chan's JPEG beside a large image


def _atomic_write(path: Path, data: bytes, root: Path) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename (which replaces an
    existing file, or a symlink by that name, rather than writing through it)."""
    if not _inside(path.parent.resolve(), root):
        raise UnsafePath(f"{path.parent} leads outside the output folder {root}")
    fd, temp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), _FILE_MODE)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _name_max(folder: Path) -> int:
    try:
        return os.statvfs(folder).f_namemax
    except (AttributeError, OSError):
        return 255


def save_image(image: Image.Image, folder: Path, basename: str, namegen: FilenameGenerator, options: JobOptions,
               root: Path, *, extension: str = "png", info: str | None = None, short_filename: bool = False,
               grid: bool = False, suffix: str = "") -> SavedFile:
    """A1111 `images.save_image` into `folder` (already checked to lie in `root`)."""
    extension = extension.lower()
    if max(image.size) > _MAX_SIDE.get(extension, 1 << 31):
        extension = "png"
    root = root.resolve()
    save_to_dirs = options.grid_save_to_dirs if grid else options.save_to_dirs
    if save_to_dirs:
        dirname = namegen.apply(options.directories_filename_pattern or "[prompt_words]").lstrip(" ").rstrip("\\ /")
        # A name that comes out absolute ("[none]/x") stays under the folder here (A1111 would write to /x).
        folder = folder / dirname.lstrip("\\/")
    folder = Path(os.path.normpath(folder))
    if not _inside(folder, root):
        raise UnsafePath(f"{folder} is outside the output folder {root}")
    folder.mkdir(parents=True, exist_ok=True)
    if not _inside(folder.resolve(), root):
        raise UnsafePath(f"{folder} leads outside the output folder {root}")

    seed = namegen.seed
    if short_filename or seed is None:
        decoration = ""
    elif options.save_to_dirs:  # A1111 reads the samples option here, for grids too
        decoration = options.samples_filename_pattern or "[seed]"
    else:
        decoration = options.samples_filename_pattern or "[seed]-[prompt_spaces]"
    decoration = namegen.apply(decoration) + suffix
    add_number = options.save_images_add_number or decoration == ""
    if decoration != "" and add_number:
        decoration = f"-{decoration}"
    # A1111 cuts the whole path to the file system's name limit; here only the name is cut (docs/compatibility.md).
    limit = _name_max(folder) - max(4, len(extension) + 1)

    with _lock:
        if add_number:
            count = get_next_sequence_number(folder, basename)
            for i in range(500):
                number = f"{count + i:05}" if basename == "" else f"{basename}-{count + i:04}"
                stem = f"{number}{decoration}"[:limit]
                path = folder / f"{stem}.{extension}"
                if not path.exists():
                    break
        else:
            stem = decoration[:limit]
            path = folder / f"{stem}.{extension}"
        if "/" in stem or "\\" in stem or stem in ("", ".", ".."):
            raise UnsafePath(f"not a file name: {stem!r}")
        if options.save_images_replace_action != "Replace":
            n = 0
            while path.exists():
                n += 1
                path = folder / f"{stem}-{n}.{extension}"
        geninfo = info if options.enable_pnginfo else None
        _atomic_write(path, encode_image(image, extension, geninfo, options.jpeg_quality, options.webp_lossless),
                      root)

        downscaled = None
        oversize = image.width > options.target_side_length or image.height > options.target_side_length
        too_big = path.stat().st_size > options.img_downscale_threshold * 1024 * 1024
        if options.export_for_4chan and (oversize or too_big):
            small = image
            if oversize:
                ratio = image.width / image.height
                side = options.target_side_length
                size = ((round(side), round(image.height * side / image.width)) if ratio > 1
                        else (round(image.width * side / image.height), round(side)))
                small = image.resize(size, Image.Resampling.LANCZOS)
            downscaled = path.with_suffix(".jpg")
            _atomic_write(downscaled, encode_image(small, "jpg", geninfo, options.jpeg_quality), root)

        txt_path = None
        if options.save_txt and info is not None:
            txt_path = path.with_suffix(".txt")
            _atomic_write(txt_path, f"{info}\n".encode(), root)
    return SavedFile(path, txt_path, downscaled)


@dataclass(frozen=True)
class JobNames:
    """The job-wide part of the file names (NameContext without the per-image place)."""

    context: NameContext
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]


def save_outputs(outputs: Outputs, names: JobNames, options: JobOptions, root: Path, kind: str,
                 request: SaveRequest, result: GenerationResult | None = None,
                 interrupted: bool = False) -> tuple[list[SavedFile], list[str]]:
    """Save a job's samples (option `samples_save`; an interrupted job's only with `save_incomplete_images`),
    its mask images (`save_mask`, `save_mask_composite`) and its grid (`grid_save`), as A1111's
    process_images_inner does. Returns the files written and one warning per file that could not be."""
    samples_key, grids_key = folder_keys(kind)
    saved: list[SavedFile] = []
    warnings: list[str] = []
    ctx = names.context
    batch = max(ctx.batch_size, 1)

    def attempt(what: str, write) -> None:
        try:
            saved.append(write())
        except (OSError, UnsafePath, OptionRefused) as exc:
            log.error("could not save %s: %s", what, exc)
            warnings.append(f"could not save {what}: {exc}")

    def folder_of(key: str) -> Path | None:
        try:
            return output_folder(root, key, getattr(options, key))
        except OptionRefused as exc:  # checked at submit; a symlink made since leads elsewhere
            log.error("%s", exc)
            warnings.append(str(exc))
            return None

    save_samples = request.samples and options.samples_save and (options.save_incomplete_images or not interrupted)
    folder = folder_of(samples_key) if save_samples else None
    if folder is not None:
        for out in _samples_and_masks(outputs, options, result):
            i = out.source
            image_ctx = _at(ctx, i // batch, i % batch)
            namegen = FilenameGenerator(image_ctx, names.seeds[i], names.prompts[i], out.image)
            suffix = "" if out.kind == "sample" else f"-{out.kind}"
            attempt(f"image {i}{suffix}", lambda out=out, namegen=namegen, suffix=suffix: save_image(
                out.image, folder, "", namegen, options, root, extension=options.samples_format, info=out.infotext,
                suffix=suffix))
    folder = folder_of(grids_key) if request.grid and options.grid_save and outputs.grid is not None else None
    if folder is not None and outputs.grid is not None:
        last = len(names.seeds) - 1  # after the loop A1111's `p` still points at the last image
        namegen = FilenameGenerator(_at(ctx, last // batch, last % batch), names.seeds[0], names.prompts[0],
                                    outputs.grid.image, basename="grid")
        attempt("the grid", lambda: save_image(
            outputs.grid.image, folder, "grid", namegen, options, root, extension=options.grid_format,
            info=outputs.grid.infotext, short_filename=not options.grid_extended_filename, grid=True))
    return saved, warnings


def _at(ctx: NameContext, iteration: int, batch_index: int) -> NameContext:
    return replace(ctx, iteration=iteration, batch_index=batch_index)


def _samples_and_masks(outputs: Outputs, options: JobOptions,
                       result: GenerationResult | None) -> Iterable[OutputImage]:
    """The generations, each followed by the mask images A1111 saves for it (options `save_mask`,
    `save_mask_composite`, whether returned or not), carrying the infotext of their generation."""
    for out in outputs.images:
        if out.kind != "sample":
            continue
        yield out
        if result is not None and (options.save_mask or options.save_mask_composite):
            for kind, image in mask_images(result, out.source, options.save_mask, options.save_mask_composite):
                yield OutputImage(image, out.infotext, out.source, kind)


def job_names(plan: GenerationPlan, model_name: str | None, model_hash: str | None, prompt: str,
              negative_prompt: str, job_timestamp: str, style_prompts: Iterable[str],
              max_prompt_words: int) -> JobNames:
    """The job's side of the file name tags, from the plan (A1111 reads them from `p`)."""
    sampler = SAMPLERS[plan.sampler]
    label = get_sampler_and_scheduler(plan.sampler, plan.scheduler)[1]
    context = NameContext(
        steps=plan.steps, cfg_scale=float(plan.cfg_scale), sampler=plan.sampler,
        scheduler_label=scheduler_tag(sampler.default_scheduler, label), styles=tuple(plan.report.styles),
        style_prompts=tuple(style_prompts), prompt=prompt, negative_prompt=negative_prompt,
        all_seeds=tuple(plan.seeds), batch_size=plan.batch_size, n_iter=plan.n_iter, model_name=model_name,
        model_hash=model_hash, job_timestamp=job_timestamp, clip_skip=plan.clip_skip,
        denoising_strength=plan.report.denoising_strength, max_prompt_words=max_prompt_words,
    )
    return JobNames(context, tuple(plan.prompts), tuple(plan.seeds))
