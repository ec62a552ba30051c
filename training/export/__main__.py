"""python -m training.export --preset tiny|smollm2|--checkpoint DIR --out MODEL_REPOSITORY [options]

Writes the `qanchor` Triton model (Python backend, safetensors weights + config + sha256 manifest, versioned by
model version) and, with --text-encoder, the `text_encoder` model next to it. Prints the model version folder.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.artifact_io import default_model_repository
from training.export.qanchor import QAnchorExportConfig, export_qanchor


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="training checkpoint folder (training.artifacts)")
    src.add_argument("--preset", help="config preset (tiny, smollm2, qwen2.5-0.5b) or YAML: an untrained model")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for --preset (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="Triton model repository (default "
                   "$QANCHOR_STATE_DIR/model_repository)")
    p.add_argument("--model-version", default="", help="MODEL_VERSION served (default <config>-<weights sha>)")
    p.add_argument("--instance-kind", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--torch-threads", type=int, default=0, help="intra-op threads per instance (0 = all cores; "
                   "use 1 when the CPU is shared with other busy processes)")
    p.add_argument("--cache-mb", type=int, default=1024, help="prefix KV cache budget in MiB")
    p.add_argument("--contract", choices=["v1", "v2"], default="v2",
                   help="v2 (default): leading batch dim + dynamic batcher, concurrent requests share forwards; "
                   "v1: no batch dim, one request per execute (the gateway speaks both)")
    p.add_argument("--max-batch-size", type=int, default=16, help="v2: most requests one execute batches")
    p.add_argument("--max-queue-delay-us", type=int, default=2000,
                   help="v2: longest a request waits for others to batch with (microseconds)")
    p.add_argument("--only", action="store_true", help="serve only this model version (drop the others)")
    p.add_argument("--max-loaded-versions", type=int, default=4,
                   help="model versions one instance holds, counting those published while it runs (default 4)")
    p.add_argument("--text-encoder", action="store_true", help="also export the event text_encoder model")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    repo = args.out or default_model_repository()
    cfg = QAnchorExportConfig(preset=args.preset, checkpoint=args.checkpoint, overrides=args.overrides,
                              model_version=args.model_version, instance_kind=args.instance_kind,
                              instances=args.instances, torch_threads=args.torch_threads, cache_mb=args.cache_mb,
                              contract=args.contract, max_batch_size=args.max_batch_size,
                              max_queue_delay_us=args.max_queue_delay_us, only=args.only,
                              max_loaded_versions=args.max_loaded_versions)
    try:
        folder = export_qanchor(repo, cfg)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    if args.text_encoder:
        from training.export.text_encoder import TextEncoderExportConfig, export_text_encoder

        export_text_encoder(repo, TextEncoderExportConfig(device=args.instance_kind))
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
