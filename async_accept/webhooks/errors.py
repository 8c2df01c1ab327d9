"""The webhook errors."""

from __future__ import annotations

from ..errors import AsyncAcceptError

__all__ = [
    "WebhookError",
    "WebhookResolveError",
    "WebhookTargetError",
    "WebhookVerificationError",
]


class WebhookError(AsyncAcceptError):
    """Root of the webhook errors."""


class WebhookVerificationError(WebhookError):
    """A received webhook is not authentic: missing or malformed headers, a
    timestamp outside the tolerance, or no matching signature."""


class WebhookTargetError(WebhookError):
    """The policy refuses to send to ``url``; ``reason`` says why."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"webhook target {url!r} refused: {reason}")


class WebhookResolveError(WebhookError):
    """The target's host name could not be resolved (possibly a passing fault)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"webhook target {url!r} could not be resolved: {reason}")
