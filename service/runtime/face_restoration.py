"""`restore_faces` at submit time (A1111 modules/processing.py: process_images_inner, `if p.restore_faces`): the plan
gets the restorer option `face_restoration_model` names (engine/face_restoration.py), which the pipeline runs on
each decoded image.

A1111 restores nothing, silently, when that model is not installed (modules/face_restoration.py: restore_faces
finds no restorer and returns the image). sdedge makes the image too but says so: a sentence in `info`'s
`sdedge_warnings` and in the log (docs/compatibility.md).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial

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


def attach(restorers, plan: GenerationPlan) -> GenerationPlan:
    """The plan with its face restorer (the pipeline runs it on each decoded image), or, when its face
    restoration cannot run, with a warning in its report (logged too)."""
    report = plan.report
    if not report.restore_faces:
        return plan
    reason = unavailable(restorers, plan)
    if reason is None:
        restore = partial(restorers.restore, name=report.face_restoration_model, weight=report.code_former_weight)
        return replace(plan, face_restorer=restore)
    log.warning("%s", reason)
    return replace(plan, report=replace(report, warnings=(*report.warnings, reason)))
