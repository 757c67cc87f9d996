"""The operator's API calls are repeated after a transient failure (issue 12, point 5): which failures, and how
often. The calls themselves against a flaky API server: tests/kube/test_flaky_api_flow.py."""

from __future__ import annotations

from collections.abc import Callable

import kubernetes
import pytest
import urllib3

from imagesync.controller.kube import RETRY_DELAYS, retrying


def failing(*failures: BaseException) -> tuple[Callable[[], str], list[int]]:
    """A call that raises ``failures`` in turn, then answers "ok"; and its attempt count."""
    attempts = [0]

    def call() -> str:
        attempts[0] += 1
        if attempts[0] <= len(failures):
            raise failures[attempts[0] - 1]
        return "ok"
    return call, attempts


def api_error(status: int) -> kubernetes.client.ApiException:
    return kubernetes.client.ApiException(status=status, reason="injected")


@pytest.mark.parametrize("failure", [api_error(500), api_error(503), api_error(504), api_error(429),
                                     urllib3.exceptions.ProtocolError("connection dropped")])
def test_a_transient_failure_is_tried_again(failure: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("imagesync.controller.kube.time.sleep", slept.append)
    call, attempts = failing(failure, failure)
    assert retrying(call) == "ok" and attempts == [3]
    assert slept == list(RETRY_DELAYS[:2])


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_an_answer_that_will_not_change_is_raised_at_once(status: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imagesync.controller.kube.time.sleep", lambda _: None)
    call, attempts = failing(api_error(status))
    with pytest.raises(kubernetes.client.ApiException) as raised:
        retrying(call)
    assert raised.value.status == status and attempts == [1]


def test_a_conflict_is_tried_again_only_where_the_write_may_be_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("imagesync.controller.kube.time.sleep", lambda _: None)
    call, attempts = failing(api_error(409))
    assert retrying(call, conflict=True) == "ok" and attempts == [2]


def test_the_last_failure_is_raised_once_the_delays_run_out(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("imagesync.controller.kube.time.sleep", slept.append)
    call, attempts = failing(*[api_error(503)] * (len(RETRY_DELAYS) + 1))
    with pytest.raises(kubernetes.client.ApiException):
        retrying(call)
    assert attempts == [len(RETRY_DELAYS) + 1] and slept == list(RETRY_DELAYS)
