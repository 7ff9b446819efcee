"""Independent runs side by side (medcl.engine.runs): order, workers, threads, failures."""

from __future__ import annotations

import os

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


def test_threads_per_job() -> None:
    assert threads_per_job(1, cores=2) == 2 and threads_per_job(2, cores=2) == 1
    assert threads_per_job(4, cores=2) == 1 and threads_per_job(2, cores=16) == 8
    with pytest.raises(ValueError, match="jobs must be at least 1, got 0"):
        threads_per_job(0)
    with pytest.raises(ValueError, match="jobs must be at least 1, got 0"):
        run_tasks(pow, [(1, 1)], jobs=0)
