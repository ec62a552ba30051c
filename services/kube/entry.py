"""python -m services.kube.entry --checkpoint DIR [--metrics FILE] [--result-file F] -- COMMAND...

What a pretraining Job's container runs: COMMAND (training.pretrain, or torchrun around it) with its output
passed through, then, on pod index 0 after a zero exit, a JSON result written to the termination message file
(/dev/termination-log; at most 4096 bytes are kept by Kubernetes):

    {"checkpoint": DIR, "sha256": <of DIR/weights.safetensors>, "metrics": {<last values of metrics.jsonl>}}

The backend reads it from the pod status (no API or database credentials in the pod) and records the result.
Exits with COMMAND's exit status.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from services.common.files import sha256_file

TERMINATION_LOG = Path("/dev/termination-log")
MESSAGE_MAX = 4096


def last_metrics(path: Path, keep: int = 24) -> dict[str, float]:
    """The latest value of each numeric key in a metrics.jsonl (training and held-out lines), bounded in count."""
    out: dict[str, float] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        out.update({k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    preferred = [k for k in out if k.startswith("val_")] + ["step", "loss"]
    ordered = [k for k in preferred if k in out] + [k for k in out if k not in preferred]
    return {k: round(out[k], 6) for k in ordered[:keep]}


def write_result(result: dict[str, Any], path: Path) -> None:
    text = json.dumps(result, sort_keys=True)
    while len(text.encode()) > MESSAGE_MAX and result.get("metrics"):
        result["metrics"].popitem()  # the sha256 and the path matter; metrics are also in metrics.jsonl
        text = json.dumps(result, sort_keys=True)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.kube.entry", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder the command writes")
    p.add_argument("--metrics", type=Path, help="metrics.jsonl of the run")
    p.add_argument("--result-file", type=Path, default=TERMINATION_LOG)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command to run after --")
    proc = subprocess.Popen(command)
    # Kubernetes stops a pod with SIGTERM: pass it on, so the trainer can save and torchrun can stop its ranks.
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    rc = proc.wait()
    if rc != 0 or os.environ.get("JOB_COMPLETION_INDEX", "0") != "0":
        return rc
    weights = args.checkpoint / "weights.safetensors"
    if not weights.is_file():
        print(f"entry: {weights} was not written; the run left no checkpoint", file=sys.stderr)
        return 3
    result = {"checkpoint": str(args.checkpoint), "sha256": sha256_file(weights),
              "metrics": last_metrics(args.metrics) if args.metrics else {}}
    write_result(result, args.result_file)
    print(json.dumps({"result": result}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
