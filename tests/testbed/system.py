"""System parts the test bed needs, and what to do when one is missing."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_system_part(found: str | None, name: str, package: str) -> None:
    """Skip (developer machine) or fail (CI, ``CI=true``) when a binary a test needs is missing:
    in CI a skip would hide that nothing was tested."""
    if found is not None:
        return
    message = f"{name} is not installed (Debian package {package}; `bash tests/setup-env.sh` installs it)"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
