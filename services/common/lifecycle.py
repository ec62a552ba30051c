"""Stopping a service's parts in order, each one timed and logged (`<service> closed part=... seconds=...`), so a
slow or hung stop names its step in the log (with SIGUSR1's stack dump, services/common/signals.py)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

Closer = tuple[str, Callable[[], None]]
W = TypeVar("W")


def close_in_order(service: str, closers: Sequence[Closer]) -> None:
    """Run every closer in order; one that raises is logged and the rest still run."""
    for part, close in closers:
        t0 = time.monotonic()
        try:
            close()
        except Exception as exc:  # a part that fails to close must not keep the others open
            log.warning(f"{service} close failed", extra={"part": part, "error": type(exc).__name__,
                                                          "detail": str(exc)[:300]})
            continue
        log.info(f"{service} closed", extra={"part": part, "seconds": round(time.monotonic() - t0, 3)})


@dataclass
class WorkerService(Generic[W]):
    """A built consumer service (`python -m services.ingest`, `services.eventlog`): the worker its main loop runs,
    and the parts to close after it, in order (leaving the Kafka group first moves the partitions at once)."""
    name: str
    worker: W
    closers: list[Closer] = field(default_factory=list)

    def close(self) -> None:
        close_in_order(self.name, self.closers)
