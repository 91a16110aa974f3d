"""The loaded pipelines: up to `sd_checkpoints_limit` checkpoints kept, least recently used evicted first.

A1111 keeps that many models in `checkpoints_loaded` (modules/sd_models.py: reuse_model_from_already_loaded) and
drops the oldest beyond the limit. Here a checkpoint a running job holds (`pinned`) is never evicted: while every
loaded model is in use the cache stays above the limit, and shrinks back when those jobs end. Each checkpoint
loads once even when several workers ask for it together (one loading lock per checkpoint); loads of different
checkpoints, and jobs on models already loaded, do not wait for each other.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class PipelineCache:
    """`load(key)` builds a pipeline; `limit()` is read at every change (the option may change at run time)."""

    def __init__(self, load: Callable[[Any], Any], limit: Callable[[], int] = lambda: 1):
        self.load_fn = load
        self.limit = limit
        self._lock = threading.Lock()
        self._pipelines: OrderedDict[Hashable, Any] = OrderedDict()  # least recently used first
        self._pins: Counter[Hashable] = Counter()
        self._loading: dict[Hashable, threading.Lock] = {}

    def _limit(self) -> int:
        try:
            return max(1, int(self.limit()))
        except (TypeError, ValueError):
            return 1

    def get(self, key: Hashable) -> Any:
        """The pipeline of `key`, loaded if needed, now the most recently used."""
        with self._lock:
            if key in self._pipelines:
                self._pipelines.move_to_end(key)
                return self._pipelines[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # a second worker asking for the same checkpoint waits for this load
            with self._lock:
                if key in self._pipelines:
                    self._pipelines.move_to_end(key)
                    return self._pipelines[key]
            pipeline = self.load_fn(key)
            with self._lock:
                self._pipelines[key] = pipeline
                self._pipelines.move_to_end(key)
                self._loading.pop(key, None)
                self._evict()
            return pipeline

    def peek(self, key: Hashable) -> Any | None:
        """The loaded pipeline of `key`, or None; its place in the order unchanged."""
        with self._lock:
            return self._pipelines.get(key)

    def touch(self, key: Hashable) -> None:
        with self._lock:
            if key in self._pipelines:
                self._pipelines.move_to_end(key)

    @contextmanager
    def pinned(self, keys: Sequence[Hashable]) -> Iterator[None]:
        """While inside, none of `keys` is evicted; on leaving, the cache shrinks to its limit again."""
        with self._lock:
            for key in keys:
                self._pins[key] += 1
        try:
            yield
        finally:
            with self._lock:
                for key in keys:
                    self._pins[key] -= 1
                    if self._pins[key] <= 0:
                        del self._pins[key]
                self._evict()

    def _evict(self) -> None:
        """Drop least recently used, unpinned pipelines beyond the limit (call with the lock held)."""
        limit = self._limit()
        for key in list(self._pipelines):
            if len(self._pipelines) <= limit:
                break
            if self._pins.get(key):
                continue
            del self._pipelines[key]
            log.info("unloaded %s (sd_checkpoints_limit %d)", getattr(key, "title", key), limit)

    def items(self) -> list[tuple[Hashable, Any]]:
        """(key, pipeline) pairs, least recently used first."""
        with self._lock:
            return list(self._pipelines.items())

    def most_recent(self) -> tuple[Hashable, Any] | None:
        with self._lock:
            if not self._pipelines:
                return None
            key = next(reversed(self._pipelines))
            return key, self._pipelines[key]

    def clear(self) -> None:
        """Forget every pipeline; jobs holding one keep it until they end."""
        with self._lock:
            self._pipelines.clear()
