"""Overlap I/O and decoding with model compute: a bounded, ordered, threaded map."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")
MMAP_THRESHOLD = 256 * 1024  # bytes: larger blocks are mmapped, and unmapped when freed
_malloc_bounded = False


def bound_malloc(threshold: int = MMAP_THRESHOLD) -> None:
    """Fix glibc's mmap threshold (once per process; a no-op off glibc or when
    MALLOC_MMAP_THRESHOLD_ is set). By default glibc raises the threshold each time a mapped block
    is freed (up to 32 MiB), after which decoded photos, tensors and file bytes of every size come
    from the heap and fragment it: a 2,000-photo ingest grew by 456-528 MiB in its second half, to
    a 1.8-1.9 GB peak; with a fixed threshold each such block goes back to the system when freed:
    5 MiB, a 1.32 GB peak, no slower (docs/BENCHMARKS.md section 16)."""
    global _malloc_bounded
    if _malloc_bounded:
        return
    _malloc_bounded = True
    import ctypes
    import os

    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return
    try:
        ctypes.CDLL(None).mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def prefetch_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, depth: int = 64
                 ) -> Iterator[R]:
    """Like map(fn, items), with up to `depth` results computed ahead in `workers` threads.

    PIL decoding and hashing release the GIL, so one worker thread keeps the model fed while
    torch uses the other cores. Stops the workers promptly when the consumer stops.
    """
    bound_malloc()
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
