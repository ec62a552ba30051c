"""A hook that makes a stop or a crash land at an exact point of the batch cycle (tests and drills, not production).

With INGEST_BATCH_GATE=DIR the worker, before it processes batch N, writes DIR/N.process.waiting and waits until
DIR/N.process exists; before it commits batch N, the same with `N.commit`. A test opens gates one by one, so it
knows which batch is in hand when it sends SIGTERM or SIGKILL: no sleeping, no racing the machine's speed.
"""
from __future__ import annotations

import time
from pathlib import Path


class FileGate:
    def __init__(self, directory: Path, poll_s: float = 0.02) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.poll_s = poll_s

    def __call__(self, stage: str, batch: int) -> None:
        name = f"{batch}.{stage}"
        (self.dir / f"{name}.waiting").touch()
        while not (self.dir / name).exists():
            time.sleep(self.poll_s)


def open_gate(directory: Path, stage: str, batch: int) -> None:
    """Let the worker past `stage` of batch `batch` (test side; the gate may be opened before the worker starts)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / f"{batch}.{stage}").touch()


def waiting_at(directory: Path, stage: str, batch: int) -> bool:
    return (Path(directory) / f"{batch}.{stage}.waiting").exists()
