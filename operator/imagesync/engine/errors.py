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


# Registry-supplied text (error messages, tags, media types, URLs) is cut to this before it reaches an
# error, a status or a log: a hostile registry must not fill a Kubernetes status or a log line.
MESSAGE_MAX_CHARS = 300


def clip(text: str, limit: int = MESSAGE_MAX_CHARS) -> str:
    """``text`` as one short line: control characters and line breaks become spaces, runs of whitespace
    one space, and anything past ``limit`` characters is replaced by an ellipsis."""
    # Only the head is looked at: a multi-megabyte string costs no more than a short one.
    head = text[: limit * 4 + 1]
    if not head.isprintable():  # the common case (a digest, a media type) skips the walk over its characters
        head = "".join(c if c.isprintable() else " " for c in head)
    flat = " ".join(head.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
