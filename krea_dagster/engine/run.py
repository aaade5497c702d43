"""Run the engine's coroutines from synchronous code (a Dagster step, a sensor, a script)."""

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["run_coroutine"]

T = TypeVar("T")


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion, whatever the calling thread is doing.

    A step usually runs on a thread without an event loop, where ``asyncio.run`` is all it
    takes. When a loop already runs on this thread (``dg.materialize`` from a Jupyter notebook,
    or next to Playwright's sync API), the coroutine gets a fresh loop on a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:
        # Outside the except block, so an error of the coroutine is not chained to the
        # "no running event loop" RuntimeError that only meant "use asyncio.run".
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="krea-dagster") as pool:
        return pool.submit(asyncio.run, coroutine).result()
