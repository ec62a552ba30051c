"""python -m services.tuning.pod --job-id ID --scenario S --query Q --labels FILE.npz [--model-version V]
    [--params JSON]

What a Kubernetes tuning Job's container runs (services/tuning/on_kubernetes.py creates it): the tuning run
without the registry. Progress goes to stdout as JSON lines ({"progress": 0.42, "message": "step 12/30", ...}),
which the worker follows through the pod's log; the outcome (artifact URI, sha256, metrics, model version) is
written as JSON to the termination message file, where the worker reads it from the pod status and records it
in the registry. The pod needs no database, broker or API credentials. Settings: TUNING_ARTIFACT_DIR,
TUNING_MODEL_REPOSITORY, TUNING_DEVICE (as for the worker). Exit 0 on success, 2 for a job that cannot run as
asked (the reason is the termination message), 1 for anything else.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from services.kube.entry import TERMINATION_LOG

PROGRESS_KEY = "progress"


def progress_line(fraction: float, message: str, stats: dict[str, float]) -> str:
    return json.dumps({PROGRESS_KEY: round(fraction, 4), "message": message,
                       **{k: round(float(v), 6) for k, v in stats.items()}})


def parse_progress(line: str) -> tuple[float, str, dict[str, float]] | None:
    """A progress line of this pod's output -> (fraction, message, stats); None for any other line."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
        fraction = float(data.pop(PROGRESS_KEY))
        message = str(data.pop("message", ""))
        return fraction, message, {k: float(v) for k, v in data.items() if isinstance(v, (int, float))}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def main(argv: list[str] | None = None) -> int:
    usage_line = " ".join(__doc__.split("\n\n")[0].split())  # the docstring's first paragraph, on one line
    p = argparse.ArgumentParser(prog="python -m services.tuning.pod", description=usage_line)
    p.add_argument("--job-id", required=True)
    p.add_argument("--scenario", required=True)
    p.add_argument("--query", required=True, help="the scenario's query text")
    p.add_argument("--labels", required=True, help="feature snapshot .npz (or CSV where Feast is reachable)")
    p.add_argument("--model-version", default="", help='"" = the model repository\'s default version')
    p.add_argument("--params", default="{}", help="tuning params as a JSON object of strings")
    p.add_argument("--result-file", type=Path, default=TERMINATION_LOG)
    args = p.parse_args(argv)

    from services.common.logging import setup_logging
    from services.tuning.dataset import DatasetError
    from services.tuning.jobs import JobError, ModelCache, tune_to_artifact
    from services.tuning.settings import TuningSettings

    settings = TuningSettings()
    setup_logging("tuning-pod", settings.log_level)

    def progress(fraction: float, message: str, stats: dict[str, float]) -> None:
        print(progress_line(fraction, message, stats), flush=True)

    def result(payload: dict[str, Any]) -> None:
        args.result_file.write_text(json.dumps(payload, sort_keys=True)[:4096])

    try:
        params = json.loads(args.params)
        if not isinstance(params, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        result({"error": f"--params must be a JSON object of strings ({exc})"})
        return 2
    try:
        outcome = tune_to_artifact(args.job_id, args.scenario, args.query, args.labels, args.model_version,
                                   {str(k): str(v) for k, v in params.items()}, settings,
                                   ModelCache(settings.device), progress)
    except (JobError, DatasetError) as exc:
        result({"error": str(exc)})
        return 2
    except Exception as exc:  # noqa: BLE001 - say what happened where the worker will read it
        logging.getLogger(__name__).exception("tuning pod crashed", extra={"job_id": args.job_id})
        result({"error": f"internal error ({type(exc).__name__}: {exc}); see this pod's log"})
        return 1
    result(outcome.to_json())
    progress(1.0, "artifact written", {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
