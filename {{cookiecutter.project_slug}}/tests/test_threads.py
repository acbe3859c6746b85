"""train.threads left null: torch's default, no more than the cores other work leaves free."""

import logging

import pytest
import torch

from {{ cookiecutter.package_name }} import device, recipe
from {{ cookiecutter.package_name }}.config import Config
from {{ cookiecutter.package_name }}.log import LOGGER_NAME


@pytest.mark.parametrize(
    ("default", "processes", "cores", "busy", "threads"),
    [
        (2, 1, 2, 0.1, 2),  # an idle 2-core machine: torch's default
        (2, 1, 2, 0.6, 1),  # one process keeps a core mostly busy: one thread
        (2, 1, 2, 2.0, 1),  # every core busy: still one thread, never none
        (8, 1, 16, 4.0, 8),  # enough free cores for torch's default
        (16, 1, 16, 6.3, 10),  # 6 busy of 16: the other 10
        (8, 4, 16, 3.0, 2),  # DDP: the job's 3 other processes are not others' work
        (8, 4, 16, 14.0, 1),  # DDP, 11 cores busy elsewhere: 5 free, 1 for each of 4
        (2, 1, 2, None, 2),  # nothing tells the load here: torch's default
    ],
)
def test_threads_are_torchs_default_up_to_the_free_cores(default, processes, cores, busy, threads):
    chosen, reason = device.automatic_threads(default, processes, cores, busy, environ={})
    assert chosen == threads, reason
    assert reason


def test_a_thread_variable_the_user_set_wins_over_the_load():
    environ = {"OMP_NUM_THREADS": "4"}
    threads, reason = device.automatic_threads(4, 1, 8, 7.5, environ=environ)
    assert threads == 4 and "OMP_NUM_THREADS=4" in reason
    threads, reason = device.automatic_threads(4, 2, 8, 7.5, environ=environ)
    assert threads == 2 and "shared by 2 processes" in reason


def test_the_choice_is_one_auto_line_and_recorded(monkeypatch, project_log):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(recipe, "cpu_cores", lambda: 2)
    monkeypatch.setattr(recipe, "busy_cores", lambda: 1.0)
    project_log.set_level(logging.INFO, logger=LOGGER_NAME)
    cfg = recipe.choose_machine_settings(Config())
    assert cfg.train.threads == 1
    lines = [r.getMessage() for r in project_log.records if "auto: train.threads" in r.getMessage()]
    assert lines == [
        "auto: train.threads=1 (1.0 of 2 CPU cores busy with other work at the start: "
        "a thread on a busy core would slow every step)"
    ]
    given = Config()
    given.train.threads = 2  # set by the user: kept, whatever the load
    assert recipe.choose_machine_settings(given).train.threads == 2


def test_busy_cores_reads_the_share_of_non_idle_time(monkeypatch):
    # cpu0 busy the whole time, cpu1 idle: one core busy; a cpu outside the affinity is left out
    samples = iter(
        [
            {0: (100, 1000), 1: (500, 1000)},
            {0: (100, 1100), 1: (600, 1100)},
        ]
    )
    monkeypatch.setattr(device, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(device.time, "sleep", lambda seconds: None)
    assert device.busy_cores() == pytest.approx(1.0)


def test_cpu_times_are_those_of_this_processs_cores():
    times = device._cpu_times()
    if times is None:
        pytest.skip("no /proc/stat on this system")
    assert set(times) <= set(range(1024))
    assert len(times) == device.cpu_cores()
    assert all(0 <= idle <= total for idle, total in times.values())


def test_the_cpus_are_looked_at_only_when_the_choice_depends_on_them():
    def must_not_look():
        raise AssertionError("looked at the CPUs (0.3 s of the run's start) for nothing")

    given = {"OMP_NUM_THREADS": "2"}
    assert device.automatic_threads(2, 1, 2, must_not_look, environ=given)[0] == 2
    assert device.automatic_threads(1, 1, 2, must_not_look, environ={})[0] == 1
    assert device.automatic_threads(4, 4, 4, must_not_look, environ={})[0] == 1
    assert device.automatic_threads(2, 1, 2, lambda: 1.0, environ={})[0] == 1
