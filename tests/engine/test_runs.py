"""Independent runs side by side (medcl.engine.runs): order, workers, threads, failures."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from medcl.engine.runs import run_tasks, threads_per_job


def test_one_job_runs_here_in_order() -> None:
    seen: list[tuple[int, int]] = []
    out = run_tasks(pow, [(2, 3), (3, 2), (5, 0)], jobs=1, on_done=lambda i, r: seen.append((i, r)))
    assert out == [8, 9, 1] and seen == [(0, 8), (1, 9), (2, 1)]
    assert run_tasks(os.getpid, [()], jobs=4) == [os.getpid()]  # one task: no workers
    assert run_tasks(pow, [], jobs=2) == []


@pytest.mark.slow
def test_two_jobs_run_in_two_spawned_workers_with_their_share_of_threads() -> None:
    pids = run_tasks(os.getpid, [()] * 6, jobs=2)
    assert os.getpid() not in pids and 1 <= len(set(pids)) <= 2
    assert run_tasks(torch.get_num_threads, [()] * 2, jobs=2) == [threads_per_job(2)] * 2
    seen: list[int] = []
    out = run_tasks(pow, [(i, 2) for i in range(7)], jobs=2, on_done=lambda i, r: seen.append(i))
    assert out == [i * i for i in range(7)] and sorted(seen) == list(range(7))


@pytest.mark.slow
def test_a_failed_task_is_raised() -> None:
    with pytest.raises(ValueError, match="invalid literal for int"):
        run_tasks(int, [("1",), ("x",), ("3",)], jobs=2)


def _timed(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@pytest.mark.slow
def test_a_free_worker_takes_the_first_ready_task_and_waits_for_prerequisites() -> None:
    # task 2 waits for the long task 0; task 3 is ready at once: when task 1 frees its worker,
    # task 3 (not task 2) starts there, and task 2 starts only once task 0 has finished
    spans = run_tasks(_timed, [(1.5,), (0.1,), (0.1,), (0.1,)], jobs=2, after=[[], [], [0], []])
    (_, end0), (_, end1), (start2, _), (start3, _) = spans
    assert start3 < end0 and start3 >= end1
    assert start2 >= end0


def test_prerequisites_are_earlier_tasks() -> None:
    order: list[int] = []
    out = run_tasks(
        pow, [(2, 1), (2, 2), (2, 3)], after=[[], [0], [0, 1]], on_done=lambda i, r: order.append(i)
    )
    assert out == [2, 4, 8] and order == [0, 1, 2]
    with pytest.raises(ValueError, match=r"task 1 waits for \[1\]: prerequisites must be earlier"):
        run_tasks(pow, [(2, 1), (2, 2)], jobs=2, after=[[], [1]])
    with pytest.raises(ValueError, match=r"task 0 waits for \[2\]"):
        run_tasks(pow, [(2, 1), (2, 2)], after=[[2], []])
    with pytest.raises(ValueError, match="prerequisites for 1 tasks, there are 2"):
        run_tasks(pow, [(2, 1), (2, 2)], after=[[]])


def _sleep_then_touch(seconds: float, path: str) -> None:
    time.sleep(seconds)
    open(path, "w").close()


@pytest.mark.slow
def test_a_failed_prerequisite_is_raised_and_its_dependents_never_start(tmp_path: Path) -> None:
    files = [str(tmp_path / f"task{i}") for i in range(4)]
    tasks = [(0.3, files[0]), ("x", files[1]), (0.0, files[2]), (0.0, files[3])]
    with pytest.raises(TypeError):  # time.sleep("x")
        run_tasks(_sleep_then_touch, tasks, jobs=2, after=[[], [], [1], [0, 2]])
    assert [os.path.exists(f) for f in files] == [True, False, False, False]


def test_threads_per_job() -> None:
    assert threads_per_job(1, cores=2) == 2 and threads_per_job(2, cores=2) == 1
    assert threads_per_job(4, cores=2) == 1 and threads_per_job(2, cores=16) == 8
    with pytest.raises(ValueError, match="jobs must be at least 1, got 0"):
        threads_per_job(0)
    with pytest.raises(ValueError, match="jobs must be at least 1, got 0"):
        run_tasks(pow, [(1, 1)], jobs=0)
