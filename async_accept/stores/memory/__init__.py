"""The in-process backend: the job store (:mod:`.store`) and the webhook outbox
(:mod:`.outbox`), for tests and single-process use."""

from .outbox import MemoryOutbox
from .store import MemoryStore

__all__ = ["MemoryOutbox", "MemoryStore"]
