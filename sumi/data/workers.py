"""An ordered, bounded map over worker processes: how ``sumi data prepare --workers N`` tokenizes.

:func:`ordered_map` yields ``fn(context, task)`` for each task in the tasks' order, whatever order
the workers finish in, so the output is the same for any number of workers.  At most ``2 *
workers`` tasks are in flight: the tasks are read from their iterator only as results are taken,
so memory does not grow with the input.  Workers are started with ``spawn`` (a fork would copy
the tokenizer's thread pool and the caller's threads), ignore Ctrl-C (the caller handles it and
stops them) and exit by themselves when the caller dies, even by ``SIGKILL``.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

_END = object()
_context: Any = None  # in a worker: the context its initializer received


def default_workers() -> int:
    """The CPUs this process may run on (``os.sched_getaffinity`` where it exists, else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def ordered_map(fn: Callable[[Any, Any], Any], context: Any, tasks: Iterable, workers: int) -> Iterator:
    """``fn(context, task)`` for each of ``tasks``, in order.

    ``fn`` must be a module-level function and ``context`` picklable (each worker receives it
    once).  With ``workers == 1``, or when there is only one task, everything runs in this process
    (no start-up cost).  An exception raised by ``fn`` is raised here, at its task's turn; a worker
    that dies (killed, crashed) is a ``RuntimeError`` saying what may have happened."""
    tasks = iter(tasks)
    head = [t for t in (next(tasks, _END), next(tasks, _END)) if t is not _END]
    if workers == 1 or len(head) < 2:
        for task in itertools.chain(head, tasks):
            yield fn(context, task)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(context, os.getpid()))
    pending: deque[Future] = deque()
    try:
        for task in itertools.chain(head, tasks):
            pending.append(pool.submit(_run, fn, task))
            if len(pending) >= 2 * workers:
                yield _result(pending.popleft())
        while pending:
            yield _result(pending.popleft())
    finally:
        # on an error or an early stop, drop the queued tasks; the running ones end on their own
        pool.shutdown(wait=not pending, cancel_futures=True)


def _result(future: Future) -> Any:
    try:
        return future.result()
    except BrokenProcessPool as e:
        raise RuntimeError(
            "a worker process died: killed (out of memory?) or crashed, or the calling script starts them while "
            "it is being imported (a script that calls this must do so under `if __name__ == '__main__':`, since "
            "workers are spawned and import the script); workers=1 (--workers 1) tokenizes in this process") from e


def _start_worker(context: Any, parent: int) -> None:
    global _context
    _context = context
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: N workers, N threads
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the caller decides
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    """Exit when ``parent`` is gone (this process was re-parented): a killed prepare leaves no workers."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _run(fn: Callable[[Any, Any], Any], task: Any) -> Any:
    return fn(_context, task)
