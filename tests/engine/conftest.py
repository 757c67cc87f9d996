"""Fixtures shared by the engine tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() points the root logger at standard error or --log: give the next test back the original.
    Modules that call main() in-process use it (pytestmark = pytest.mark.usefixtures("restore_logging"))."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:], root.level = handlers, level
