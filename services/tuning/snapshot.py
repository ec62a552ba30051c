"""python -m services.tuning.snapshot --labels labels.csv --out snapshot.npz [--feast-config feature_store.yaml]

Services env (Feast): reads the labelled users' features from the online store and writes a tuning snapshot
(services.tuning.dataset). The tuning worker runs it as a subprocess for a CSV labels file when it has a services
interpreter (TUNING_FEATURES_PYTHON); where it has none (the model image), run this first and pass the .npz as
labels_uri. Users the store does not know are dropped (a cold-start user carries no signal) and counted in meta.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from services.tuning.dataset import DatasetError, TuningData, read_labels_csv

log = logging.getLogger(__name__)
CHUNK = 512  # users per online read: one batched Feast call each


def make_snapshot(labels_csv: Path, feast_config: Path, out: Path) -> TuningData:
    from services.common.feast_store import get_store
    from services.common.features import build_user_batch_arrays, load_feature_spec
    from services.common.features_online import FeatureReader

    users, labels = read_labels_csv(labels_csv)
    if not Path(feast_config).is_file():
        raise DatasetError(f"Feast config {feast_config} not found; run the stack's feast step or set "
                           "TUNING_FEAST_CONFIG")
    spec = load_feature_spec()
    reader = FeatureReader(get_store(feast_config), spec, serving=True)
    rows = []
    for s in range(0, len(users), CHUNK):
        rows += reader.get(users[s: s + CHUNK])
    keep = [i for i, r in enumerate(rows) if r.found]
    found = [rows[i] for i in keep]
    arrays = build_user_batch_arrays(found, spec)
    data = TuningData(
        user_ids=[users[i] for i in keep], labels=labels[keep],
        event_vecs=arrays.event_vecs, event_mask=arrays.event_mask, tabular=arrays.tabular,
        feature_version=np.asarray([r.feature_version for r in found], dtype=np.int64),
        meta={"feature_service": spec.feature_service, "n_labelled": len(users), "n_missing": len(users) - len(keep),
              "labels": str(labels_csv), "created_at": time.time()},
    )
    data.save(out)
    log.info("tuning snapshot written", extra={"path": str(out), "users": len(keep),
                                               "missing": len(users) - len(keep)})
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.tuning.snapshot", description=__doc__.split("\n")[0])
    p.add_argument("--labels", type=Path, required=True, help="CSV with header user_id,label")
    p.add_argument("--out", type=Path, required=True, help="snapshot .npz to write")
    p.add_argument("--feast-config", type=Path, required=True, help="feature_store.yaml of the online store")
    args = p.parse_args(argv)
    from services.common.logging import setup_logging

    setup_logging("tuning-snapshot")
    try:
        data = make_snapshot(args.labels, args.feast_config, args.out)
    except DatasetError as exc:
        print(f"snapshot failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"path": str(args.out), "users": len(data.user_ids), "missing": data.meta["n_missing"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
