"""The OpenMP wait policy chosen for a child process from the load of other programs."""

import os

import pytest

from llavamini.utils import openmp


@pytest.fixture
def cpu_times(monkeypatch):
    """Replace /proc/stat by a sequence of aggregate 'cpu' lines (user, nice, system, idle,
    iowait); no sleeping."""

    def install(*samples):
        iterator = iter(samples)
        monkeypatch.setattr(openmp, "_cpu_times", lambda: next(iterator))
        monkeypatch.setattr(openmp.time, "sleep", lambda seconds: None)
        for name in openmp.USER_SETTINGS:
            monkeypatch.delenv(name, raising=False)

    return install


def test_threads_sleep_only_when_other_programs_keep_a_core_busy(cpu_times):
    cores = os.cpu_count()
    # 100 ticks per core: everything idle, then one core's worth busy.
    cpu_times([0, 0, 0, 0, 0], [0, 0, 0, 100 * cores, 0])
    assert openmp.wait_policy_environment() == {}
    cpu_times([0, 0, 0, 0, 0], [90, 0, 10, 100 * cores - 100, 0])
    assert openmp.busy_cores() == pytest.approx(1.0)
    cpu_times([0, 0, 0, 0, 0], [90, 0, 10, 100 * cores - 100, 0])
    assert openmp.wait_policy_environment() == {"OMP_WAIT_POLICY": "PASSIVE"}
    cpu_times([0, 0, 0, 0, 0], [0, 0, 0, 100 * cores - 100, 100])  # waiting for a disk
    assert openmp.wait_policy_environment() == {}


def test_a_policy_the_user_set_is_left_alone(cpu_times, monkeypatch):
    cpu_times([0, 0, 0, 0, 0], [100, 0, 0, 0, 0])
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")
    assert openmp.wait_policy_environment() == {}


def test_the_real_proc_stat_gives_a_load_within_the_machine():
    if not os.path.exists("/proc/stat"):
        assert openmp.busy_cores(0.05) is None
        return
    assert 0.0 <= openmp.busy_cores(0.2) <= os.cpu_count()
