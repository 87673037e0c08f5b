"""The one thread rule (zsdemo.threads): OMP_NUM_THREADS, else the idle cores shared among the processes."""

from __future__ import annotations

import os

import pytest

from zsdemo.threads import idle_cores, local_processes, threads_per_process


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})


def test_omp_num_threads_wins(monkeypatch, four_cores):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_process(2) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # not a number: ignored, with a warning
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert threads_per_process(1) == 4


@pytest.mark.parametrize("load, processes, threads", [(0.0, 1, 4), (0.0, 2, 2), (0.0, 8, 1), (2.7, 1, 2),
                                                      (2.7, 2, 1), (9.0, 1, 1)])
def test_idle_cores_are_shared_among_the_processes(monkeypatch, four_cores, load, processes, threads):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert threads_per_process(processes) == threads
    assert 1 <= idle_cores() <= 4


def test_local_processes_reads_the_launcher(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert local_processes(8) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "x")
    assert local_processes(3) == 3
