"""SIGTERM/SIGINT as a stop flag for the consumer services' main loops (ingest, eventlog)."""
from __future__ import annotations

import logging
import signal
import threading


def stop_on_signals(log: logging.Logger, what: str) -> threading.Event:
    """An event set by SIGTERM or SIGINT; each signal logs `signal received: <what>` with the signal's name."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info(f"signal received: {what}", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
