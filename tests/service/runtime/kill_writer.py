"""Run by tests/service/runtime/test_atomic_write.py in its own (single-threaded) process: `rounds` times, fork a
writer that rewrites the options file as fast as it can, SIGKILL it after a random delay, then load the file as a
starting server would. Prints one JSON summary line.

usage: kill_writer.py PATH ROUNDS SEED atomic|naive
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import time
from pathlib import Path

from service.runtime.options import Options

FILLER = "x" * 300_000  # a large value: each write takes long enough for kills to land inside it
VALID = re.compile(rf"^\d+-x{{{len(FILLER)}}}$")


def writer(path: Path, naive: bool) -> None:
    options = Options(path)
    if naive:  # the control: an in-place rewrite, which a kill can leave torn
        options._save = lambda: path.write_text(json.dumps(options._values, indent=2))  # type: ignore[method-assign]
    i = 0
    while True:
        i += 1
        options.update({"sd_model_checkpoint": f"{i}-{FILLER}"})


def main() -> None:
    path, rounds, seed, mode = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rng = random.Random(seed)
    loaded = failed = stale = 0
    left: set[Path] = set()  # temporary files left by earlier kills
    for _ in range(rounds):
        pid = os.fork()
        if pid == 0:
            try:
                writer(path, naive=mode == "naive")
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.005, 0.06))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        now = set(path.parent.glob(f".{path.name}.*.tmp"))
        stale += bool(now - left)  # this kill interrupted a write: it left a new temporary file
        left = now
        try:
            value = Options(path).get("sd_model_checkpoint")
            ok = value is None or bool(VALID.match(value))
        except (ValueError, OSError):  # json.JSONDecodeError is a ValueError
            ok = False
        loaded += ok
        failed += not ok
    print(json.dumps({"rounds": rounds, "loaded": loaded, "failed": failed, "killed_mid_write": stale}))


if __name__ == "__main__":
    main()
