"""Independent runs side by side: ``jobs`` separate processes, each with its share of the cores.

For protocols made of many small, independent trainings (one fine-tuning run per method, labelled
count and seed), where one run cannot use 2+ cores well: two one-thread runs finish in about the
time of one two-thread run. This is not data parallelism (one training over several processes is
:mod:`medcl.engine.distributed`, i.e. ``torchrun``); each task here is a whole run that writes its
own folder.

Tasks may wait for others (``after``): a fine-tuning run for the pretraining it starts from. A
free worker takes the first task, in the given order, whose prerequisites have finished, so a
worker is never idle while a task is ready.

Workers are *spawned* (fresh interpreters, no forked torch state); each sets its torch threads to
``threads`` and logs at the parent's level. Results come back in task order; the first task that
fails cancels the ones not yet started and is raised once the running ones have finished.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Torch threads for each of ``jobs`` workers sharing ``cores`` (default: the usable CPUs)."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // jobs)


def _init_worker(threads: int, level: int) -> None:
    import torch

    from medcl.logging_utils import setup_logging

    torch.set_num_threads(threads)
    setup_logging(0 if level >= logging.WARNING else 1 if level >= logging.INFO else 2)


def _check_after(after: Sequence[Iterable[int]] | None, n: int) -> list[set[int]]:
    if after is None:
        return [set() for _ in range(n)]
    if len(after) != n:
        raise ValueError(f"after names prerequisites for {len(after)} tasks, there are {n}")
    out = [set(deps) for deps in after]
    for i, deps in enumerate(out):
        wrong = sorted(d for d in deps if not 0 <= d < i)
        if wrong:  # earlier tasks only: the order is then a valid order to run them one by one
            raise ValueError(f"task {i} waits for {wrong}: prerequisites must be earlier tasks")
    return out


def run_tasks(
    fn: Callable[..., T],
    tasks: Sequence[tuple[Any, ...]],
    *,
    jobs: int = 1,
    on_done: Callable[[int, T], None] | None = None,
    after: Sequence[Iterable[int]] | None = None,
) -> list[T]:
    """``fn(*task)`` for every task, ``jobs`` at a time; results in the order of ``tasks``.

    Args:
        fn: a module-level function (it is pickled by name for the workers).
        tasks: the argument tuples (picklable).
        jobs: processes at once; 1 runs every task here, in this process, in order.
        on_done: called in this process with ``(index, result)`` as each task finishes.
        after: for each task, the indices of earlier tasks that must finish before it starts.

    Raises:
        ValueError: ``jobs < 1``, or ``after`` names a task that is not an earlier one.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    needs = _check_after(after, len(tasks))
    results: dict[int, T] = {}
    if jobs == 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            results[i] = fn(*task)
            if on_done is not None:
                on_done(i, results[i])
        return [results[i] for i in range(len(tasks))]
    workers = min(jobs, len(tasks))
    threads = threads_per_job(workers)
    log.info("%d runs, %d at a time, %d torch thread(s) each", len(tasks), workers, threads)
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    waiting = list(range(len(tasks)))
    pending: dict[Future[T], int] = {}
    failure: BaseException | None = None
    with ProcessPoolExecutor(workers, context, _init_worker, (threads, level)) as pool:
        while failure is None and (waiting or pending):
            # fill the free workers with the first ready tasks, in order
            for i in list(waiting):
                if len(pending) >= workers:
                    break
                if needs[i] <= results.keys():
                    waiting.remove(i)
                    pending[pool.submit(fn, *tasks[i])] = i
            done, _ = wait(pending, return_when="FIRST_COMPLETED")
            for future in done:
                i = pending.pop(future)
                if (error := future.exception()) is not None:
                    failure = failure or error
                    continue
                results[i] = future.result()
                if on_done is not None:
                    on_done(i, results[i])
        if failure is not None:
            pool.shutdown(wait=True)  # the running tasks finish; no other task starts
            raise failure
    return [results[i] for i in range(len(tasks))]
