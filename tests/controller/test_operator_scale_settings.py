"""The operator's settings for many ImageSyncJobs (docs/operator-scale.md): kopf's handler threads and its
per-object workers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import kopf
import pytest

from imagesync.controller.main import (
    OBJECT_WORKER_IDLE_SECONDS,
    OBJECT_WORKERS_PER_HANDLER_THREAD,
    main,
    tune_kopf,
)
from imagesync.controller.settings import (
    DEFAULT_HANDLER_THREADS,
    HANDLER_THREADS_ENV,
    OperatorSettings,
    SettingsError,
)


def test_handler_threads_are_fixed_not_the_node_s_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HANDLER_THREADS_ENV, raising=False)
    kopf_settings = kopf.OperatorSettings()
    tune_kopf(kopf_settings, OperatorSettings())
    assert kopf_settings.execution.max_workers == DEFAULT_HANDLER_THREADS
    # kopf's own executor takes the size: its default would be min(32, CPUs + 4).
    executor = kopf_settings.execution.executor
    assert isinstance(executor, ThreadPoolExecutor) and executor._max_workers == DEFAULT_HANDLER_THREADS


def test_object_workers_are_bounded_and_leave_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HANDLER_THREADS_ENV, raising=False)
    kopf_settings = kopf.OperatorSettings()
    kopf_idle = kopf_settings.queueing.idle_timeout
    assert kopf_settings.queueing.worker_limit is None  # kopf's default: a worker for every object at once
    tune_kopf(kopf_settings, OperatorSettings())
    assert kopf_settings.queueing.worker_limit == DEFAULT_HANDLER_THREADS * OBJECT_WORKERS_PER_HANDLER_THREAD
    assert kopf_settings.queueing.idle_timeout == OBJECT_WORKER_IDLE_SECONDS < kopf_idle


@pytest.mark.parametrize(("value", "threads"), [("3", 3), (" 16 ", 16), ("64", 64), ("", DEFAULT_HANDLER_THREADS)])
def test_handler_threads_come_from_the_environment(value: str, threads: int) -> None:
    settings = OperatorSettings.from_env({HANDLER_THREADS_ENV: value})
    assert settings.handler_threads == threads
    kopf_settings = kopf.OperatorSettings()
    tune_kopf(kopf_settings, settings)
    assert kopf_settings.execution.max_workers == threads
    assert kopf_settings.queueing.worker_limit == threads * OBJECT_WORKERS_PER_HANDLER_THREAD


@pytest.mark.parametrize("value", ["0", "65", "-1", "eight", "2.5"])
def test_a_bad_thread_count_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{HANDLER_THREADS_ENV}="):
        OperatorSettings.from_env({HANDLER_THREADS_ENV: value})


def test_the_operator_command_refuses_a_bad_thread_count_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(HANDLER_THREADS_ENV, "0")
    assert main(["--kubeconfig", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and HANDLER_THREADS_ENV in err and "Traceback" not in err, err
