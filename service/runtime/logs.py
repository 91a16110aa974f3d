"""Log setup for `sdedge serve --log-format text|json`, and the job log (one line per job start and end).

JSON lines carry `ts`, `level`, `logger`, `message` and every field a call passed in `extra` (`task_id`, `kind`,
`wait_s`, `run_s`, `state`, `status`, `route`, ...), so a log pipeline can join a request's access line with its
job's lines by `task_id`. The stdlib formatter is enough for this (no JSON-logging dependency): records are flat
and their values are strings and numbers.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

from service.runtime.jobs import Job, JobQueue

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName",
                                                                     "color_message"}  # uvicorn's coloured copy

job_log = logging.getLogger("sdedge.jobs")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """The root handler in the chosen format; uvicorn's loggers propagate to it (serve passes log_config=None)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def _job_started(job: Job) -> None:
    wait = (job.progress.time_start or job.enqueued_at) - job.enqueued_at
    job_log.info("job %s started (%s) after %.3f s in the queue", job.id, job.kind, wait,
                 extra={"event": "job_start", "task_id": job.id, "kind": job.kind, "wait_s": round(wait, 4)})


def _job_ended(job: Job) -> None:
    start = job.progress.time_start
    run = (job.finished_at - start) if start is not None and job.finished_at is not None else 0.0
    level = logging.INFO if job.state.value == "done" else logging.WARNING
    job_log.log(level, "job %s %s (%s) in %.3f s%s", job.id, job.state.value, job.kind, run,
                f": {job.error}" if job.error else "",
                extra={"event": "job_end", "task_id": job.id, "kind": job.kind, "state": job.state.value,
                       "run_s": round(run, 4), "error": job.error})


def log_jobs(queue: JobQueue) -> None:
    """One log line as each job starts and ends, with its task id."""
    queue.on_start.append(_job_started)
    queue.on_end.append(_job_ended)
