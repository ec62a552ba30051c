"""python -m services.tuning [extra celery worker options]: start a tuning worker (Celery, threads pool, 1 slot).

Why the `threads` pool with one slot and not prefork: CUDA does not survive a fork (prefork children of a parent
that touched CUDA crash), and one GPU runs one tuning job at a time anyway. Unlike `solo`, the threads pool keeps
the main thread free while a job runs, so `celery inspect ping` (the liveness probe) still answers during a
multi-hour job. `--pool=solo` also works (pass it) but is deaf to remote control until the job ends.
"""
from __future__ import annotations

import sys

from services.common.logging import setup_logging
from services.tuning.app import configure
from services.tuning.settings import TuningSettings


def worker_argv(settings: TuningSettings, extra: list[str]) -> list[str]:
    argv = ["worker", "--pool=threads", "--concurrency=1", f"--loglevel={settings.log_level}",
            "-Q", settings.queue or "celery", "--without-gossip", "--without-mingle"]
    return argv + extra  # later options win in Celery's parser, so callers can override the pool


def main(argv: list[str] | None = None) -> None:
    settings = TuningSettings()
    setup_logging("tuning", settings.log_level)
    app = configure(settings)
    app.worker_main(worker_argv(settings, list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
