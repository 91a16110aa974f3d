"""Derived graphs of a bundle ("variants": fp16, ort-cuda, trt-ready) as the run time sees them.

`python -m export variant BUNDLE --fp16|--ort-cuda|--trt-ready` (export/variants/) writes each variant's graphs
under `BUNDLE/variants/<name>/<component>/model.onnx` and a record in the manifest's `variants` section:

    {"components": {"unet": {"path": "variants/fp16/unet/model.onnx", "precision": "fp16",
                             "external_data": {"model.onnx_data": bytes}}, "vae_decoder": {"path": null, ...}},
     "precision": "fp16", "io_dtype": "float32", "runs_on": [...providers...], "created": "...",
     "gate": {"passed": bool | null, "status": "passed" | "failed" | "needs-gpu", "min_cosine": ..., ...}}

A component whose `path` is null keeps the portable graph (an SDXL VAE stays fp32). A variant is used only when
its gate passed: `usable_variant` falls back to the portable graphs otherwise, so a variant whose numbers drifted
from the fp32 graphs (a bad conversion, corrupted weights) is never what a request runs on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from engine.bundle import Bundle, Manifest

log = logging.getLogger(__name__)

VARIANTS_DIR = "variants"


def variant_record(manifest: Manifest, variant: str) -> dict | None:
    return (manifest.variants or {}).get(variant)


def variant_gate_passed(manifest: Manifest, variant: str) -> bool:
    record = variant_record(manifest, variant)
    return bool(record and (record.get("gate") or {}).get("passed") is True)


def variant_component_path(bundle: Bundle, component: str, variant: str) -> Path | None:
    """The variant's graph of `component` when the variant has its own and its files are complete; else None."""
    record = variant_record(bundle.manifest, variant)
    entry = ((record or {}).get("components") or {}).get(component) or {}
    relative = entry.get("path")
    if not relative:
        return None
    path = bundle.path / relative
    if not path.is_file():
        log.warning("%s: variant %s lists %s, which is missing", bundle.path, variant, path)
        return None
    for name, size in (entry.get("external_data") or {}).items():
        data = path.parent / name
        if not data.is_file() or data.stat().st_size != size:
            log.warning("%s: variant %s: %s is missing or not %d bytes", bundle.path, variant, data, size)
            return None
    return path


@dataclass(frozen=True)
class VariantView(Bundle):
    """The bundle with the variant's graphs in place of the portable ones (components the variant does not
    replace stay portable). Backends read `component_path`, so every backend runs a view unchanged."""

    variant: str = ""

    def component_path(self, component: str) -> Path:
        base, _, _ = component.partition(":")
        own = variant_component_path(self, base, self.variant)
        return own if own is not None else Bundle.component_path(self, component)


def variant_view(bundle: Bundle, variant: str) -> VariantView:
    """The view of `variant` whatever its gate says (for the gate itself)."""
    if variant_record(bundle.manifest, variant) is None:
        raise KeyError(f"{bundle.path}: no variant {variant!r} (have: {sorted(bundle.manifest.variants)})")
    return VariantView(path=bundle.path, manifest=bundle.manifest, variant=variant)


def usable_variant(bundle: Bundle, variant: str) -> Bundle:
    """The view of `variant` when its recorded gate passed, else the portable bundle (with the reason logged)."""
    record = variant_record(bundle.manifest, variant)
    if record is None:
        log.info("%s: no variant %s; using the portable graphs", bundle.path, variant)
        return bundle
    if not variant_gate_passed(bundle.manifest, variant):
        gate = record.get("gate") or {}
        log.warning("%s: variant %s not used: its validation gate is %s (%s); using the portable graphs",
                    bundle.path, variant, gate.get("status", "missing"), gate.get("reason", "no gate recorded"))
        return bundle
    return variant_view(bundle, variant)
