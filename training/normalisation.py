"""The dense user vector's normalisation constants, shipped in the model checkpoint (and from there to ingest).

    python -m training.normalisation --checkpoint artifacts/default --dataset ml-1m

writes `normalisation.json` (training.data.stats.Normalisation: train-user mean/std of each statistic and of each
dimension of the history mean vector) into a checkpoint trained before checkpoints carried it, from the same world
and user split training used; the weights are not touched. Pretraining writes it with every checkpoint, and beside
it `train_users.json`: the fingerprints (training.data.identity) of the train users whose moments these are, the
users pretraining read, so that an evaluation can tell which users the model has seen.

Both files are recorded in the manifest under `normalisation` (file + sha256), not in `files`: `files` defines the
checkpoint id (the serving model version, what soft prompts were tuned for), and the weights did not change.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
from pathlib import Path
from typing import Any

from training.artifact_io import MANIFEST, file_sha256, write_text_atomic
from training.data.stats import Normalisation

log = logging.getLogger(__name__)

MANIFEST_KEY = "normalisation"
FILE = "normalisation.json"
USERS_FILE = "train_users.json"
MOVIELENS = ("ml-1m", "ml-100k")  # datasets whose train users a recorded provenance rebuilds (older checkpoints)


def write_normalisation(d: Path, norm: Normalisation, provenance: dict[str, Any],
                        users: dict[str, str] | None = None) -> dict[str, Any]:
    """Write `d/normalisation.json` and, given the train users' fingerprints ({user id: fingerprint},
    training.data.identity), `d/train_users.json`; -> the manifest entry (files, sha256s, provenance)."""
    from training.data.identity import FINGERPRINT

    write_text_atomic(Path(d) / FILE, norm.to_json())
    entry = {"file": FILE, "sha256": file_sha256(Path(d) / FILE), **provenance}
    if users is not None:
        write_text_atomic(Path(d) / USERS_FILE, json.dumps({"fingerprint": FINGERPRINT, "users": users},
                                                           sort_keys=True))
        entry.update(users_file=USERS_FILE, users_sha256=file_sha256(Path(d) / USERS_FILE))
    return entry


def attach_normalisation(d: Path, norm: Normalisation, provenance: dict[str, Any],
                         users: dict[str, str] | None = None) -> Path:
    """Add the constants (and the train users' fingerprints) to an existing checkpoint (or replace them); the
    manifest stays valid, the id the same."""
    d = Path(d)
    manifest_path = d / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found: point --checkpoint at a training checkpoint folder")
    manifest = json.loads(manifest_path.read_text())
    manifest[MANIFEST_KEY] = write_normalisation(d, norm, provenance, users)
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True))
    return d / FILE


def checkpoint_normalisation(d: Path) -> Path | None:
    """The checkpoint's verified constants file, or None when it has none (trained before they shipped)."""
    d = Path(d)
    entry = json.loads((d / MANIFEST).read_text()).get(MANIFEST_KEY)
    if not entry:
        return None
    return _verified(d, entry["file"], entry["sha256"],
                     f"write it again with python -m training.normalisation --checkpoint {d}")


def _verified(d: Path, name: str, sha256: str | None, fix: str) -> Path:
    """`d/name` where its sha256 is the one the manifest's entry records; else RuntimeError saying `fix`."""
    path = d / name
    if not path.is_file() or file_sha256(path) != sha256:
        raise RuntimeError(f"{path} is missing or differs from the sha256 in {d / MANIFEST}; {fix}")
    return path


def checkpoint_train_users(d: Path) -> dict[str, str] | None:
    """{user id: fingerprint} of the users a checkpoint was pretrained on (training.data.identity): its
    train_users.json (verified), else, for a checkpoint that predates the file and records a MovieLens dataset, the
    train users of the world its provenance rebuilds; None when it records neither."""
    from training.data.identity import FINGERPRINT

    d = Path(d)
    entry = json.loads((d / MANIFEST).read_text()).get(MANIFEST_KEY) or {}
    if entry.get("users_file"):
        path = _verified(d, entry["users_file"], entry.get("users_sha256"),
                         "copy it back from the run that wrote the checkpoint (a MovieLens one: python -m "
                         f"training.normalisation --checkpoint {d} --dataset DATASET writes it again)")
        body = json.loads(path.read_text())
        if body.get("fingerprint") != FINGERPRINT:
            raise RuntimeError(f"{path} holds {body.get('fingerprint')!r} fingerprints, this code makes "
                               f"{FINGERPRINT!r}; write it again with python -m training.normalisation")
        return body["users"]
    if entry.get("dataset") not in MOVIELENS:
        return None
    keys = ("dataset", "max_users", "split_salt", "min_history", "min_future")
    return dict(_movielens_train_users(*(entry.get(k) for k in keys)))


@functools.lru_cache(maxsize=4)
def _movielens_train_users(dataset: str, max_users: int | None, split_salt: str | None, min_history: int | None,
                           min_future: int | None) -> tuple[tuple[str, str], ...]:
    """A MovieLens world's train-user fingerprints, rebuilt from a provenance (fields it lacks: the defaults, which
    every checkpoint before they were recorded used)."""
    from training.data.features import train_users
    from training.data.identity import fingerprints

    world = provenance_world(dataset, max_users, split_salt=split_salt, min_history=min_history,
                             min_future=min_future)
    return tuple(sorted(fingerprints(world, train_users(world)).items()))


def provenance_world(dataset: str, max_users: int | None = None, **recorded: Any):
    """The MovieLens world a checkpoint's normalisation provenance names: `recorded` WorldConfig fields it holds
    (split_salt, min_history, min_future; None or absent: the defaults every older checkpoint used)."""
    from training.data.world import WorldConfig, build_world

    given = {k: v for k, v in recorded.items() if v is not None}
    return build_world(WorldConfig(dataset=dataset, max_users=max_users, **given))


def fit_for_world(dataset: str, max_users: int | None = None
                  ) -> tuple[Normalisation, dict[str, Any], dict[str, str]]:
    """The constants training computes for a dataset's world (its train users, the cached MiniLM vectors), their
    provenance and the train users' fingerprints."""
    from training.data.encoder import cached_text_vectors
    from training.data.features import fit_normalisation, train_users
    from training.data.identity import fingerprints

    world = provenance_world(dataset, max_users)
    vecs = cached_text_vectors(world.texts, dataset, progress=False)
    prov = {"dataset": dataset, "max_users": max_users, "train_users": len(train_users(world)),
            "split_salt": world.cfg.split_salt}
    return fit_normalisation(world, vecs), prov, fingerprints(world, train_users(world))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint folder (manifest.json)")
    p.add_argument("--dataset", default="ml-1m", choices=["ml-1m", "ml-100k"], help="what it was pretrained on")
    p.add_argument("--max-users", type=int, default=None, help="as given to training.pretrain, if it was")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    norm, prov, users = fit_for_world(args.dataset, args.max_users)
    path = attach_normalisation(args.checkpoint, norm, prov, users)
    log.info("normalisation_written path=%s dataset=%s train_users=%d", path, args.dataset, prov["train_users"])
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
