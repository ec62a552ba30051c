"""A reader and a writer on the same SQLite online store at once, as the gateway and ingest run in production.

Two FeatureStore objects (two SQLite connections, like two processes). Every write stamps each user's texts with
the row's feature_version, so a reader can check that what it got is one whole row: version and data together.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from services.common.feast_store import apply, get_store
from services.common.features import SourceEvents, UserFeatures, load_feature_spec
from services.common.features_online import FeatureReader, FeatureWriter

pytestmark = pytest.mark.integration

USERS = [f"conc-{i}" for i in range(32)]


def _rows(spec, version: int) -> list[UserFeatures]:
    s = spec.sources[0]
    vec = np.full((s.k, spec.encoder_dim), float(version % 1000), dtype=np.float16)
    return [UserFeatures(uid, {s.name: SourceEvents([f"v{version}"] * s.k, vec, np.arange(s.k, dtype=np.int64))},
                         feature_version=version, updated_at=time.time()) for uid in USERS]


def test_reads_during_writes_see_whole_rows(tmp_path: Path) -> None:
    spec = load_feature_spec()
    config = apply(tmp_path / "state")
    writer = FeatureWriter(get_store(config), spec)
    reader = FeatureReader(get_store(config), spec)
    writer.write(_rows(spec, 1))
    reader.get(USERS)  # warm: registry, FeatureService, connection

    stop = threading.Event()
    errors: list[BaseException] = []
    written = [1]

    def write_loop() -> None:
        try:
            v = 1
            while not stop.is_set():
                v += 1
                writer.write(_rows(spec, v))
                written.append(v)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=write_loop, daemon=True)
    thread.start()
    reads, lat = 0, []
    deadline = time.monotonic() + 120.0  # generous: shared machines are slow; normally a few seconds
    try:
        while (reads < 20 or len(written) < 10) and time.monotonic() < deadline and not errors:
            t0 = time.perf_counter()
            got = reader.get(USERS)
            lat.append(time.perf_counter() - t0)
            reads += 1
            for u in got:
                assert u.found
                data_version = int(u.sources[spec.sources[0].name].texts[0][1:])
                assert data_version == u.feature_version, "a read mixed two writes of one user"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, f"writer failed: {errors[0]!r}"
    assert reads >= 20 and len(written) >= 10, f"too little overlap: reads={reads} writes={len(written)}"
    print(f"reads={reads} writes={len(written)} "
          f"read_s_p50={np.median(lat):.3f} read_s_max={max(lat):.3f}")
