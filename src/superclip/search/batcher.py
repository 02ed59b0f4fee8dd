"""Model calls shared by concurrent requests: each request hands its input (a few rows of a batch) to a
:class:`Batcher` and waits; one worker thread runs one forward pass over every input waiting at that moment, so
requests arriving together (or while the previous pass ran) cost one pass instead of queueing one pass each.

Each row of the output is what the model gives that row alone (the towers treat the rows of a batch independently;
the text tower's crop to the batch's last end-of-text token leaves the earlier tokens' outputs as they were under
the causal mask): equal within float rounding (tests/test_search_batcher.py: <= 1e-6).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, List, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)


class Batcher:
    """``batcher(rows)`` -> ``fn(torch.cat(inputs))`` split back into each caller's rows.

    Args:
        fn: (B, ...) tensor -> (B, D) numpy array, run on the batcher's own thread.
        max_rows: the most rows one pass takes (more wait for the next pass).
        window: seconds the worker waits for more inputs after the first, but only while requests are arriving
            together (the previous pass had several): a lone request never waits.
        lock: held around ``fn`` (shared by the text and image batchers: one forward pass at a time, each using
            every core torch is given).
    """

    def __init__(self, fn: Callable[[torch.Tensor], np.ndarray], max_rows: int = 64, window: float = 0.002,
                 lock: Optional[threading.Lock] = None, name: str = "model"):
        self.fn, self.max_rows, self.window = fn, max_rows, window
        self.lock = lock or threading.Lock()
        self.queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self.together = False
        self.passes = 0  # forward passes run (a test and the benchmark read these)
        self.rows = 0
        self.waiting = 0  # requests queued (or gathered) and not yet answered
        self._count = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"superclip-{name}-batcher", daemon=True)
        self.thread.start()

    def __call__(self, rows: torch.Tensor) -> np.ndarray:
        """(n, ...) input rows -> (n, D) outputs; raises what the pass raised."""
        return self.submit(rows).result()

    def submit(self, rows: torch.Tensor) -> Future:
        """Hands (n, ...) input rows in and returns at once: a future of their (n, D) outputs (or of the pass's
        error). An async caller awaits it with ``asyncio.wrap_future``: the pass's thread wakes the event loop
        directly, no thread waits for it."""
        done: Future = Future()
        with self._count:
            self.waiting += 1
        done.add_done_callback(self._answered)
        self.queue.put((rows, done))
        return done

    def _answered(self, _done: Future) -> None:
        with self._count:
            self.waiting -= 1

    def _gather(self, first) -> List:
        batch, size = [first], len(first[0])
        deadline = time.monotonic() + self.window if self.together else None
        while size < self.max_rows:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic() if deadline is not None else 0
                if left <= 0:
                    break
                try:
                    item = self.queue.get(timeout=left)
                except queue.Empty:
                    break
            if item is None:
                self.queue.put(None)  # stop after this pass
                break
            batch.append(item)
            size += len(item[0])
        return batch

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = self._gather(first)
            self.together = len(batch) > 1
            try:
                with self.lock:
                    out = self.fn(torch.cat([rows for rows, _ in batch]))
                self.passes += 1
                self.rows += len(out)
                at = 0
                for rows, done in batch:
                    done.set_result(out[at:at + len(rows)])
                    at += len(rows)
            except BaseException as e:  # noqa: BLE001 - every waiting request gets the pass's error
                log.exception("model pass over %d inputs failed", len(batch))
                for _, done in batch:
                    if not done.done():
                        done.set_exception(e)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(10)
