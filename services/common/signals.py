"""SIGTERM/SIGINT as a stop flag for the consumer services' main loops (ingest, eventlog); SIGUSR1 dumps stacks."""
from __future__ import annotations

import faulthandler
import logging
import signal
import threading


def stop_on_signals(log: logging.Logger, what: str) -> threading.Event:
    """An event set by SIGTERM or SIGINT; each signal logs `signal received: <what>` with the signal's name.

    SIGUSR1 writes every thread's Python stack to stderr and the service goes on (`kill -USR1 PID`): what to run
    when a stop or a batch seems to hang, before killing the process.
    """
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info(f"signal received: {what}", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return stop
