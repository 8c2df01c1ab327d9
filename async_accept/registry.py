"""A process's beat in the store's worker registry (what ``GET {prefix}/health``
reads), which is also how the process learns that the store takes its writes:
each beat that lands or fails is told to the engine's liveness watch
(engine/liveness.py), so time in which the store blocked writes is never counted
against a running job's worker."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from .errors import StoreError

log = logging.getLogger("async_accept")


class _BeatHost(Protocol):
    """What RegistryBeat needs of the runtime it is mixed into."""

    store: Any
    engine: Any
    worker_id: str

    @property
    def astore(self) -> Any: ...

    def worker_info(self, state: str = "running") -> dict[str, Any]: ...


class RegistryBeat:
    """The runtime's ``beat``/``abeat`` (mixed into Runtime)."""

    def beat(self: _BeatHost, state: str = "running") -> None:
        """Record this process's heartbeat (the sweeper calls it every heartbeat_interval;
        a remote worker without the sweeper calls it itself)."""
        beat = getattr(self.store, "worker_heartbeat", None)
        if beat is None:
            # A store without a registry: nothing proves it writable, time counts.
            self.engine.liveness.landed()
            return
        try:
            beat(self.worker_id, self.engine.clock(), self.worker_info(state))
        except StoreError:
            self.engine.liveness.failed()
            log.warning("async_accept: worker heartbeat failed", exc_info=True)
        else:
            self.engine.liveness.landed()

    async def abeat(self: _BeatHost, state: str = "running") -> None:
        if getattr(self.store, "worker_heartbeat", None) is None:
            self.engine.liveness.landed()
            return
        try:
            await self.astore.worker_heartbeat(
                self.worker_id, self.engine.clock(), self.worker_info(state)
            )
        except StoreError:
            self.engine.liveness.failed()
            log.warning("async_accept: worker heartbeat failed", exc_info=True)
        else:
            self.engine.liveness.landed()
