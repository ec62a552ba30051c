"""python -m services.tuning.snapshot --labels L.csv --out S.npz --feast-config feature_store.yaml [--as-of TIME]

Services env (Feast): reads the labelled users' features from the online store and writes a tuning snapshot
(services.tuning.dataset). The tuning worker runs it as a subprocess for a CSV labels file when it has a services
interpreter (TUNING_FEATURES_PYTHON); where it has none (the model image), run this first and pass the .npz as
labels_uri. Users the store does not know are dropped (a cold-start user carries no signal) and counted in meta.

Labels as of a time (an `as_of` column in the CSV, or `--as-of` for a file without one): each user's features
are instead the row ingest builds from their logged events before that time (the offline event log, replayed through
ingest's own transform, the event texts encoded by the Triton text encoder ingest uses, the dense vector
standardised with the served model's constants), so a label about what a user did after a date is tuned on what was
known at it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from services.tuning.dataset import DatasetError, Labels, TuningData, read_labels

if TYPE_CHECKING:
    from services.common.features import FeatureSpec, UserFeatures
    from services.ingest.encoder import TextEncoderBackend
    from services.ingest.transform import IngestSpec

log = logging.getLogger(__name__)
CHUNK = 512  # users per online read: one batched Feast call each


def to_snapshot(labels: Labels, rows: Sequence["UserFeatures"], spec: "FeatureSpec", meta: dict,
                out: Path) -> TuningData:
    """The labelled users that have features (`rows[i]` is `labels.user_ids[i]`'s), as model-shaped arrays."""
    from services.common.features import build_user_batch_arrays

    keep = [i for i, r in enumerate(rows) if r.found]
    found = [rows[i] for i in keep]
    arrays = build_user_batch_arrays(found, spec)
    n = len(labels.user_ids)
    data = TuningData(
        user_ids=[labels.user_ids[i] for i in keep], labels=labels.labels[keep],
        event_vecs=arrays.event_vecs, event_mask=arrays.event_mask, tabular=arrays.tabular,
        feature_version=np.asarray([r.feature_version for r in found], dtype=np.int64),
        meta={"feature_service": spec.feature_service, "n_labelled": n, "n_missing": n - len(keep),
              "created_at": time.time(), **meta},
    )
    data.save(out)
    log.info("tuning snapshot written", extra={"path": str(out), "users": len(keep), "missing": n - len(keep),
                                               "features_from": meta.get("features_from", "online_store")})
    return data


def make_snapshot(labels_csv: Path, feast_config: Path, out: Path) -> TuningData:
    """The labelled users' features as the online store serves them now."""
    from services.common.feast_store import get_store
    from services.common.features import load_feature_spec
    from services.common.features_online import FeatureReader

    labels = read_labels(labels_csv)
    if not Path(feast_config).is_file():
        raise DatasetError(f"Feast config {feast_config} not found; run the stack's feast step or set "
                           "TUNING_FEAST_CONFIG")
    spec = load_feature_spec()
    reader = FeatureReader(get_store(feast_config), spec, serving=True)
    users = labels.user_ids
    rows = []
    for s in range(0, len(users), CHUNK):
        rows += reader.get(users[s: s + CHUNK])
    return to_snapshot(labels, rows, spec, {"labels": str(labels_csv), "features_from": "online_store"}, out)


def features_before(log_root: Path, times: Mapping[str, float], spec: "IngestSpec",
                    encoder: "TextEncoderBackend") -> dict[str, "UserFeatures"]:
    """user id -> the feature row ingest builds from that user's logged events *before* their time (`ts < time`),
    in log order, through ingest's own transform (`plan_user_update`, `to_features`): the row the online store held
    once it had applied exactly those events. A user with no such event is missing (`found` False)."""
    from services.common.features import UserFeatures
    from services.ingest.schema import Event
    from services.ingest.transform import Position, plan_user_update
    from training.data.event_log import read_events

    if not Path(log_root).is_dir():
        raise DatasetError(f"labels as of a time read the event log, and there is none at {log_root}; start the "
                           "stack's eventlog service, or set TUNING_EVENT_LOG_DIR / pass --log-root")
    table = read_events(Path(log_root), user_ids=list(times), end=max(times.values(), default=0.0))
    cols = table.select(["event_id", "user_id", "ts", "kind", "source", "text", "vector", "attributes", "partition",
                         "offset"]).to_pydict()
    per_user: dict[str, list[tuple[Position, Event]]] = {}
    known, undeclared = set(spec.source_names), 0
    for i, uid in enumerate(cols["user_id"]):
        if not cols["ts"][i] < times[uid]:
            continue
        if cols["kind"][i] == "event" and cols["source"][i] not in known:
            undeclared += 1  # a source sources.yaml no longer declares: ingest would dead-letter it today
            continue
        attrs = cols["attributes"][i]
        ev = Event(event_id=cols["event_id"][i], user_id=uid, kind=cols["kind"][i], ts=float(cols["ts"][i]),
                   source=cols["source"][i] or "", text=cols["text"][i] or "", vector=tuple(cols["vector"][i] or ()),
                   attributes=json.loads(attrs) if attrs else {})
        per_user.setdefault(uid, []).append((Position(int(cols["partition"][i]), int(cols["offset"][i])), ev))
    if undeclared:
        log.warning("logged events of sources sources.yaml does not declare were left out, as ingest leaves them out",
                    extra={"events": undeclared, "sources": sorted(known)})
    updates = {}
    for uid, events in per_user.items():
        events.sort(key=lambda pe: pe[0])  # log order: a user's events share a partition (record key = user id)
        update = plan_user_update(None, events, spec)
        if update is not None and update.applied:
            updates[uid] = update
    texts = sorted({t for u in updates.values() for t in u.texts_to_encode()})
    vecs = encoder.encode(texts) if texts else np.zeros((0, spec.features.encoder_dim), np.float32)
    vectors = dict(zip(texts, vecs))
    return {uid: updates[uid].to_features(vectors, spec, updated_at=float(times[uid])) if uid in updates
            else UserFeatures.missing(uid) for uid in times}


def make_snapshot_as_of(labels_csv: Path, out: Path, *, log_root: Path, encoder: "TextEncoderBackend",
                        normalisation: Path | None, as_of: float | None = None) -> TuningData:
    """The labelled users' features as of each row's `as_of` (or the `as_of` argument, for a file without that
    column), from the event log. `normalisation`: the served model's constants (ingest's INGEST_NORMALISATION);
    without them the dense vector stays empty, as ingest leaves it."""
    import dataclasses

    from services.ingest.transform import load_ingest_spec, load_normalisation

    labels = read_labels(labels_csv)
    times = labels.as_of if labels.as_of is not None else np.full(len(labels.user_ids), np.nan)
    if as_of is not None:
        times = np.where(np.isnan(times), as_of, times)
    if np.isnan(times).any():
        raise DatasetError(f"{labels_csv} has no as_of column; give one (each row's time) or --as-of TIME")
    spec = load_ingest_spec()
    spec = dataclasses.replace(spec, normalisation=load_normalisation(normalisation, spec))
    feats = features_before(log_root, dict(zip(labels.user_ids, times.tolist())), spec, encoder)
    meta = {"labels": str(labels_csv), "features_from": "event_log", "log_root": str(log_root),
            "as_of_min": float(times.min()), "as_of_max": float(times.max()),
            "normalisation": str(normalisation) if spec.normalisation is not None else ""}
    return to_snapshot(labels, [feats[u] for u in labels.user_ids], spec.features, meta, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.tuning.snapshot", description=__doc__.split("\n")[0])
    p.add_argument("--labels", type=Path, required=True,
                   help="CSV with header user_id,label (and as_of: each label's time, for features as of it)")
    p.add_argument("--out", type=Path, required=True, help="snapshot .npz to write")
    p.add_argument("--feast-config", type=Path, required=True, help="feature_store.yaml of the online store")
    p.add_argument("--as-of", default=None, metavar="TIME",
                   help="features from the events before TIME (unix seconds or ISO, UTC without a zone) for a labels "
                        "file without an as_of column: read from the event log, not the online store")
    p.add_argument("--log-root", type=Path, default=None,
                   help="the event log (as of a time only; default QANCHOR_EVENT_LOG_DIR, else "
                        "$QANCHOR_STATE_DIR/eventlog)")
    p.add_argument("--triton-url", default=None,
                   help="Triton serving text_encoder, host:port (as of a time only; default the local stack's)")
    p.add_argument("--normalisation", type=Path, default=None,
                   help="the served model's normalisation.json, as ingest reads it (as of a time only; default the "
                        "stack's model repository)")
    args = p.parse_args(argv)
    from services.common.logging import setup_logging

    setup_logging("tuning-snapshot")
    try:
        from training.data.event_log import parse_time

        default = parse_time(args.as_of) if args.as_of is not None else None
    except ValueError as exc:
        print(f"snapshot failed: --as-of {exc}", file=sys.stderr)
        return 2
    try:
        if default is not None or read_labels(args.labels).as_of is not None:
            data = _snapshot_as_of(args, default)
        else:
            data = make_snapshot(args.labels, args.feast_config, args.out)
    except DatasetError as exc:
        print(f"snapshot failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"path": str(args.out), "users": len(data.user_ids), "missing": data.meta["n_missing"],
                      "features_from": data.meta["features_from"]}))
    return 0


def _snapshot_as_of(args: argparse.Namespace, default: float | None) -> TuningData:
    from services.ingest.encoder import EncoderUnavailable, TritonTextEncoder
    from services.tuning.settings import TuningSettings

    settings = TuningSettings()
    url = args.triton_url or settings.resolved_triton_url()
    encoder = TritonTextEncoder(url)
    try:
        encoder.wait_ready(timeout_s=30)
        return make_snapshot_as_of(args.labels, args.out,
                                   log_root=args.log_root or settings.resolved_event_log_dir(), encoder=encoder,
                                   normalisation=args.normalisation or settings.resolved_normalisation(), as_of=default)
    except EncoderUnavailable as exc:
        raise DatasetError(f"labels as of a time encode the users' event texts as ingest did, with Triton's "
                           f"text_encoder: {exc}") from None
    finally:
        encoder.close()


if __name__ == "__main__":
    raise SystemExit(main())
