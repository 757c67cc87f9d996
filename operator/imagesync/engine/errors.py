"""Errors with messages meant for users: they say what is wrong and never carry a credential."""

from __future__ import annotations


class ImageSyncError(Exception):
    """Base of every error imagesync reports to a user (no traceback for these)."""


class ConfigError(ImageSyncError):
    """A configuration file or option is unusable."""


class RuleError(ImageSyncError):
    """A malformed rule: quotes the rule and says why."""

    def __init__(self, rule_text: str, reason: str) -> None:
        super().__init__(f"rule {rule_text!r}: {reason}")
        self.rule_text = rule_text
        self.reason = reason


class RegistryError(ImageSyncError):
    """A registry refused or failed a request; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = retryable
