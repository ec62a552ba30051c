"""The dense user vector's normalisation constants, shipped in the model checkpoint (and from there to ingest).

    python -m training.normalisation --checkpoint artifacts/default --dataset ml-1m

writes `normalisation.json` (training.data.stats.Normalisation: train-user mean/std of each statistic and of each
dimension of the history mean vector) into a checkpoint trained before checkpoints carried it, from the same world
and user split training used; the weights are not touched. Pretraining writes it with every checkpoint.

The file is recorded in the manifest under `normalisation` (file + sha256), not in `files`: `files` defines the
checkpoint id (the serving model version, what soft prompts were tuned for), and the weights did not change.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from training.artifact_io import MANIFEST, file_sha256, write_text_atomic
from training.data.stats import Normalisation

log = logging.getLogger(__name__)

MANIFEST_KEY = "normalisation"
FILE = "normalisation.json"


def write_normalisation(d: Path, norm: Normalisation, provenance: dict[str, Any]) -> dict[str, Any]:
    """Write `d/normalisation.json`; -> the manifest entry (file, sha256, provenance) to record it under."""
    write_text_atomic(Path(d) / FILE, norm.to_json())
    return {"file": FILE, "sha256": file_sha256(Path(d) / FILE), **provenance}


def attach_normalisation(d: Path, norm: Normalisation, provenance: dict[str, Any]) -> Path:
    """Add the constants to an existing checkpoint (or replace them); the manifest stays valid, the id the same."""
    d = Path(d)
    manifest_path = d / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: point --checkpoint at a training checkpoint folder")
    manifest = json.loads(manifest_path.read_text())
    manifest[MANIFEST_KEY] = write_normalisation(d, norm, provenance)
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
    return d / FILE


def checkpoint_normalisation(d: Path) -> Path | None:
    """The checkpoint's verified constants file, or None when it has none (trained before they shipped)."""
    d = Path(d)
    entry = json.loads((d / MANIFEST).read_text()).get(MANIFEST_KEY)
    if not entry:
        return None
    path = d / entry["file"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
        raise RuntimeError(f"{path} is missing or differs from the sha256 in {d / MANIFEST}; write it again with "
                           f"python -m training.normalisation --checkpoint {d}")
    return path


def fit_for_world(dataset: str, max_users: int | None = None) -> tuple[Normalisation, dict[str, Any]]:
    """The constants training computes for a dataset's world (its train users, the cached MiniLM vectors)."""
    from training.data.encoder import cached_text_vectors
    from training.data.features import fit_normalisation, train_users
    from training.data.world import WorldConfig, build_world

    world = build_world(WorldConfig(dataset=dataset, max_users=max_users))
    vecs = cached_text_vectors(world.texts, dataset, progress=False)
    prov = {"dataset": dataset, "max_users": max_users, "train_users": len(train_users(world)),
            "split_salt": world.cfg.split_salt}
    return fit_normalisation(world, vecs), prov


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint folder (manifest.json)")
    p.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k"], help="what it was pretrained on")
    p.add_argument("--max-users", type=int, default=None, help="as given to training.pretrain, if it was")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    norm, prov = fit_for_world(args.dataset, args.max_users)
    path = attach_normalisation(args.checkpoint, norm, prov)
    log.info("normalisation_written path=%s dataset=%s train_users=%d", path, args.dataset, prov["train_users"])
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
