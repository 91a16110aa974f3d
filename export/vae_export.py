"""A separate VAE file (A1111's `models/VAE`) → `vae_encoder` and `vae_decoder` ONNX for one model family, once.

The file is an LDM-format state dict (`encoder.*`, `decoder.*`, `quant_conv`, `post_quant_conv`; what A1111
modules/sd_vae.py: load_vae_dict loads) or a diffusers-format AutoencoderKL state dict, in `.safetensors` or a
pickled `.pt`/`.ckpt` (opened with torch's weights-only unpickler). It is converted by diffusers' own LDM VAE
converter into an AutoencoderKL built from the *bundle's* VAE config and loaded strictly (a VAE of another
architecture is refused, not half loaded), then exported with the bundle's IO contract by export/onnx_export.py's
`_export`, so the run time can swap these two components in for the checkpoint's own (engine/vae_override.py).

Output folder (written to a temporary sibling and renamed into place): `vae_encoder/`, `vae_decoder/` (each
`model.onnx` + `model.onnx_data`) and `vae.json` (`VaeRecord`). Run as `python -m export.vae_export FILE --config
CONFIG --out DIR`: the server builds in a child process, so torch never enters it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.bundle import hash_files
from engine.vae_override import RECORD_NAME
from engine.vae_override import vae_config_digest as config_digest

log = logging.getLogger(__name__)

VAE_RECORD_FORMAT = 1
# A1111 modules/sd_vae.py: load_vae_dict drops the training loss and these EMA bookkeeping entries.
IGNORED_PREFIXES = ("loss", "model_ema.")
# Keys of a diffusers-format AutoencoderKL file (vs LDM's `encoder.down.0...`).
DIFFUSERS_MARKERS = ("encoder.down_blocks.", "decoder.up_blocks.")
# diffusers' pre-0.14 attention names, still found in diffusers-format VAE files.
OLD_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


ERROR_PREFIX = "vae-export error: "


class VaeFileError(ValueError):
    """The file is not a VAE that fits the model's VAE architecture."""


@dataclass(frozen=True)
class VaeRecord:
    """`vae.json` of an exported VAE: which file, for which VAE config, and the components' IO (bundle layout)."""

    name: str
    sha256: str
    family: str
    config_digest: str
    io: dict[str, dict] = field(default_factory=dict)
    source_kind: str = "ldm"  # or "diffusers"
    format_version: int = VAE_RECORD_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def read_config(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def load_vae_state(path: Path) -> dict:
    """The file's tensors (A1111 `load_vae_dict`: `loss*` and `model_ema.*` dropped; a `state_dict` unwrapped)."""
    from export.single_file import SingleFileError, load_state_dict

    try:
        state = load_state_dict(path)
    except SingleFileError as exc:
        raise VaeFileError(str(exc)) from exc
    return {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}


def is_diffusers_layout(state: dict) -> bool:
    return any(k.startswith(DIFFUSERS_MARKERS) for k in state)


def _diffusers_keys(state: dict) -> dict:
    renamed = {}
    for key, value in state.items():
        for old, new in OLD_ATTENTION_NAMES.items():
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def build_autoencoder(state: dict, config: dict):
    """An AutoencoderKL from `config` with the file's weights, loaded strictly (LDM keys converted by diffusers'
    `convert_ldm_vae_checkpoint`, the converter its single-file loader uses)."""
    import torch
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    try:
        if is_diffusers_layout(state):
            weights = _diffusers_keys(state)
        else:
            weights = convert_ldm_vae_checkpoint(state, dict(config))
        # The LDM mid-block attention is 1×1 convs, diffusers' Linear: the converter reshapes it; a diffusers
        # file from an old release may still hold conv-shaped weights.
        weights = {k: (v[:, :, 0, 0] if k.endswith(".weight") and ".attentions." in k and v.ndim == 4 else v)
                   for k, v in weights.items()}
        vae.load_state_dict(weights, strict=True, assign=True)
    except (KeyError, IndexError, RuntimeError, ValueError) as exc:
        raise VaeFileError(f"the weights do not fit the model's VAE architecture: {_short(exc)}") from exc
    left = [n for n, t in [*vae.named_parameters(), *vae.named_buffers()] if t.device.type == "meta"]
    if left:
        raise VaeFileError(f"weights missing from the file: {left[:3]}")
    return vae.float().eval()


def _short(exc: Exception, limit: int = 400) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "…"


def export_vae_components(vae, folder: Path, external_data_threshold: int | None = None) -> dict[str, dict]:
    """`vae_encoder` and `vae_decoder` of a loaded AutoencoderKL under `folder`, with the bundle's IO contract
    (the names and dynamic axes export_pipeline gives them); returns their manifest `io` entries."""
    import torch

    from export.onnx_export import TRACE_LATENT_HW, _axes, _export, _wrappers

    _, _, VaeEncoderWrapper, VaeDecoderWrapper = _wrappers()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = TRACE_LATENT_HW
    io = {}
    io["vae_encoder"] = _export(
        VaeEncoderWrapper(vae), (torch.randn(1, 3, h * factor, w * factor),), folder / "vae_encoder" / "model.onnx",
        {"sample": _axes(batch=0, height=2, width=3)},
        {"latent_parameters": _axes(batch=0, latent_height=2, latent_width=3)},
        external_data_threshold,
    )
    io["vae_decoder"] = _export(
        VaeDecoderWrapper(vae), (torch.randn(1, vae.config.latent_channels, h, w),),
        folder / "vae_decoder" / "model.onnx",
        {"latent_sample": _axes(batch=0, latent_height=2, latent_width=3)},
        {"sample": _axes(batch=0, height=2, width=3)},
        external_data_threshold,
    )
    return io


def export_vae_file(path: Path, config: dict, out: Path, family: str, sha256: str | None = None) -> Path:
    """Convert the VAE file `path` for the VAE architecture `config` and export it to `out` (atomically: a
    finished folder appears in one rename; an existing `out` is left as it is, another process built it)."""
    from export.onnx_export import _replace_dir

    path, out = Path(path), Path(out)
    state = load_vae_state(path)
    kind = "diffusers" if is_diffusers_layout(state) else "ldm"
    vae = build_autoencoder(state, config)
    del state
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        io = export_vae_components(vae, tmp)
        record = VaeRecord(name=path.name, sha256=sha256 or hash_files([path]), family=family,
                           config_digest=config_digest(config), io=io, source_kind=kind)
        (tmp / RECORD_NAME).write_text(record.to_json())
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.vae_export",
                                     description="export a VAE file to ONNX for one model's VAE config")
    parser.add_argument("file", help="VAE file (.safetensors, .pt, .ckpt; LDM or diffusers layout)")
    parser.add_argument("--config", required=True, help="the bundle's VAE config.json (vae_decoder/config.json)")
    parser.add_argument("--family", required=True, help="model family the export is for (recorded in vae.json)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--sha256", default=None, help="the file's sha256, if already known")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        import torch

        torch.set_num_threads(1)  # a background build beside a serving process on a shared machine
        export_vae_file(Path(args.file), read_config(Path(args.config)), Path(args.out), args.family, args.sha256)
    except VaeFileError as exc:  # one line, which the server reports (service/runtime/vae.py)
        print(f"{ERROR_PREFIX}{_short(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
