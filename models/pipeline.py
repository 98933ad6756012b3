"""Overlap I/O and decoding with model compute: a bounded, ordered, threaded map."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, depth: int = 64
                 ) -> Iterator[R]:
    """Like map(fn, items), with up to `depth` results computed ahead in `workers` threads.

    PIL decoding and hashing release the GIL, so one worker thread keeps the model fed while
    torch uses the other cores. Stops the workers promptly when the consumer stops.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graceful-load")
    pending: deque = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                break
        while pending:
            result = pending.popleft().result()
            for item in it:
                pending.append(pool.submit(fn, item))
                break
            yield result
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
