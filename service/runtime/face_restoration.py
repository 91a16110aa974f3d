"""`restore_faces` at run time (A1111 modules/processing.py: process_images_inner, `if p.restore_faces`): the
decoded images of a job go through the restorer option `face_restoration_model` names (engine/face_restoration.py).

A1111 restores nothing, silently, when that model is not installed (modules/face_restoration.py: restore_faces
finds no restorer and returns the image). sdedge makes the image too but says so: a sentence in `info`'s
`sdedge_warnings` and in the log (docs/compatibility.md).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from engine.pipeline import GenerationResult
from engine.plan import GenerationPlan

log = logging.getLogger(__name__)


def unavailable(restorers, plan: GenerationPlan) -> str | None:
    """Why the plan's face restoration cannot run on this server, None when it can (or is not asked for)."""
    report = plan.report
    if not report.restore_faces or report.face_restoration_model is None:
        return None
    if restorers is None:
        return "restore_faces: no face-restorers folder is configured; the images are not restored"
    reason = restorers.missing(report.face_restoration_model)
    return f"restore_faces: {reason}; the images are not restored" if reason else None


def with_warning(restorers, plan: GenerationPlan) -> GenerationPlan:
    """The plan with a warning in its report when its face restoration cannot run (logged too)."""
    reason = unavailable(restorers, plan)
    if reason is None:
        return plan
    log.warning("%s", reason)
    return replace(plan, report=replace(plan.report, warnings=(*plan.report.warnings, reason)))


def apply(restorers, plan: GenerationPlan, result: GenerationResult) -> GenerationResult:
    """Restore the faces of every generated image in place (on the worker, after decoding)."""
    report = plan.report
    if not report.restore_faces or unavailable(restorers, plan) is not None:
        return result
    result.images = [restorers.restore(image, report.face_restoration_model, report.code_former_weight)
                     for image in result.images]
    return result
