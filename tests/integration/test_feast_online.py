"""Real Feast against a real SQLite file and a real Redis server: apply, push, get_online_features.

Redis: the shared session `stack` fixture's server when there is one, otherwise a private
`redis-server --save ''` started for this module on a free port.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

from services.common.errors import Unavailable
from services.common.feast_store import apply, get_store, render_config
from services.common.features import (
    FeatureSpec, SourceEvents, UserFeatures, build_user_batch_arrays, default_sources_path, load_feature_spec,
)
from services.common.features_online import FeatureReader, FeatureWriter

pytestmark = pytest.mark.integration


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


@pytest.fixture(scope="module")
def redis_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        stack = request.getfixturevalue("stack")
        if getattr(stack, "redis_url", None):
            yield stack.redis_url
            return
    except pytest.FixtureLookupError:
        pass
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found; install Debian's redis-server (see docs/features.md)")
    port = _free_port(23079)
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not come up on port {port}")
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _spec_file(tmp: Path, extra_source: bool = False) -> Path:
    raw = yaml.safe_load(default_sources_path().read_text())
    if extra_source:
        raw["sources"].append({"name": "searched", "k": 8, "description": "search queries"})
    path = tmp / f"sources_{int(extra_source)}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


class Env:
    def __init__(self, state_dir: Path, spec_path: Path, online: str, redis_url: str | None) -> None:
        self.state_dir, self.spec_path, self.online, self.redis_url = state_dir, spec_path, online, redis_url
        self.spec: FeatureSpec = load_feature_spec(spec_path)
        self.store = get_store(apply(state_dir, online, redis_url, sources_yaml=spec_path))
        self.reader = FeatureReader(self.store, self.spec)
        self.writer = FeatureWriter(self.store, self.spec)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Env:
    online = request.param
    url = request.getfixturevalue("redis_url") if online == "redis" else None
    tmp = tmp_path_factory.mktemp(f"feast_{online}")
    return Env(tmp / "state", _spec_file(tmp), online, url)


def _uid(tag: str) -> str:
    # Unique per run: a shared Redis may hold other tests' users.
    return f"{tag}-{uuid.uuid4().hex[:8]}"


def _user(spec: FeatureSpec, uid: str, counts: dict[str, int], version: int, seed: int) -> UserFeatures:
    rng = np.random.default_rng(seed)
    sources = {}
    for name, n in counts.items():
        sources[name] = SourceEvents(
            texts=[f"{name} event {i} of {uid} ✓" for i in range(n)],
            vectors=rng.standard_normal((n, spec.encoder_dim)).astype(np.float16),
            timestamps=np.sort(rng.integers(1_600_000_000, 1_700_000_000, n)).astype(np.int64),
        )
    return UserFeatures(user_id=uid, sources=sources, tabular=rng.standard_normal(spec.tabular_dim).astype(np.float32),
                        feature_version=version, updated_at=time.time())


def _assert_same(spec: FeatureSpec, got: UserFeatures, want: UserFeatures) -> None:
    assert got.found and got.user_id == want.user_id
    assert got.feature_version == want.feature_version
    assert got.updated_at == pytest.approx(want.updated_at, abs=1e-3)
    np.testing.assert_array_equal(got.tabular, want.tabular)
    for s in spec.sources:
        a, b = want.events(s.name, spec.encoder_dim), got.events(s.name, spec.encoder_dim)
        assert b.texts == a.texts
        assert b.vectors.dtype == np.float16 and b.vectors.shape == (len(a), spec.encoder_dim)
        np.testing.assert_array_equal(b.vectors, a.vectors)
        np.testing.assert_array_equal(b.timestamps, a.timestamps)


def test_push_then_read_round_trip(env: Env) -> None:
    spec = env.spec
    full = {s.name: s.k for s in spec.sources}
    users = [
        _user(spec, _uid("full"), full, version=(1 << 62) | 12345, seed=1),  # ingest-style huge version
        _user(spec, _uid("ユーザー:1,2"), {"liked": 3}, version=1, seed=2),  # any string id; missing sources
        _user(spec, _uid("empty"), {}, version=5, seed=3),
    ]
    env.writer.write(users)
    ghost = _uid("ghost")
    got = env.reader.get([users[2].user_id, ghost, users[0].user_id, users[1].user_id])
    assert [g.user_id for g in got] == [users[2].user_id, ghost, users[0].user_id, users[1].user_id]
    _assert_same(spec, got[0], users[2])
    _assert_same(spec, got[2], users[0])
    _assert_same(spec, got[3], users[1])
    # The model sees exactly what was written (float16 -> float32 is exact).
    arrays = build_user_batch_arrays([got[2]], spec)
    liked = spec.sources[0].name
    np.testing.assert_array_equal(arrays.event_vecs[liked][0], users[0].sources[liked].vectors.astype(np.float32))


def test_missing_users_are_found_false_not_errors(env: Env) -> None:
    ids = [_uid("nobody"), _uid("nobody")]
    got = env.reader.get(ids)
    assert [(g.user_id, g.found, g.feature_version) for g in got] == [(ids[0], False, 0), (ids[1], False, 0)]
    assert env.reader.get([]) == []
    cold = build_user_batch_arrays(got, env.spec)
    assert not any(m.any() for m in cold.event_mask.values()) and not cold.tabular.any()


def test_overwrite_is_what_is_read(env: Env) -> None:
    spec = env.spec
    uid = _uid("over")
    first = _user(spec, uid, {s.name: 2 for s in spec.sources}, version=1, seed=10)
    env.writer.write([first])
    assert env.reader.get([uid])[0].feature_version == 1
    # Same write instant on purpose: Feast's Redis store would drop it without skip_dedup.
    second = _user(spec, uid, {spec.sources[0].name: spec.sources[0].k}, version=2, seed=11)
    second.updated_at = first.updated_at
    env.writer.write([second])
    got = env.reader.get([uid])[0]
    _assert_same(spec, got, second)
    assert len(got.events(spec.sources[-1].name, spec.encoder_dim)) == 0  # the old events are gone


def test_adding_a_source_keeps_existing_users_readable(env: Env, tmp_path: Path) -> None:
    uid = _uid("evolve")
    old = _user(env.spec, uid, {env.spec.sources[0].name: 4}, version=3, seed=20)
    env.writer.write([old])
    grown = Env(env.state_dir, _spec_file(tmp_path, extra_source=True), env.online, env.redis_url)
    try:
        got = grown.reader.get([uid])[0]
        assert got.found and got.feature_version == 3
        assert len(got.events("searched", grown.spec.encoder_dim)) == 0  # new source reads as empty
        _assert_same(env.spec, got, old)
        new = _user(grown.spec, uid, {"searched": 8}, version=4, seed=21)
        grown.writer.write([new])
        _assert_same(grown.spec, grown.reader.get([uid])[0], new)
    finally:
        apply(env.state_dir, env.online, env.redis_url, sources_yaml=env.spec_path)  # back to the module's schema


def test_unreachable_redis_is_unavailable(tmp_path: Path) -> None:
    port = _free_port(0)  # nothing listens there
    state = tmp_path / "state"
    apply(state, "sqlite")  # registry only; then point the same registry at a dead Redis
    render_config(state, "redis", f"redis://127.0.0.1:{port}/0")
    store = get_store(state)
    spec = load_feature_spec()
    with pytest.raises(Unavailable, match="unreachable"):
        FeatureReader(store, spec).get(["u1"])
    with pytest.raises(Unavailable, match="retry"):
        FeatureWriter(store, spec).write([UserFeatures("u1", feature_version=1, updated_at=time.time())])


def test_one_view_is_read_and_written(env: Env) -> None:
    # One FeatureView: a write is one atomic row (features and feature_version together), a read one lookup.
    service = env.store.get_feature_service(env.spec.feature_service)
    views = [p.name for p in service.feature_view_projections]
    written = [name for name, _ in env.writer._views()]
    assert views == written == ["user_features"]


def test_sqlite_online_store_is_in_wal_mode(env: Env) -> None:
    if env.online != "sqlite":
        pytest.skip("WAL applies to the SQLite online store only")
    import sqlite3
    from contextlib import closing

    db = yaml.safe_load((env.state_dir / "feast" / "feature_store.yaml").read_text())["online_store"]["path"]
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_serving_reads_leave_ingest_bookkeeping_out(env: Env) -> None:
    """The gateway's reader (serving=True) gets everything the model reads and none of ingest's columns."""
    spec = env.spec
    user = _user(spec, _uid("serving"), {s.name: 2 for s in spec.sources}, version=7, seed=4)
    user.event_ids = ["e-1", "e-2"]
    user.stats = b"\x01sufficient-statistics" * 200
    env.writer.write([user])
    full = env.reader.get([user.user_id])[0]
    served = FeatureReader(env.store, spec, serving=True).get([user.user_id])[0]
    assert full.event_ids == ["e-1", "e-2"] and full.stats == user.stats
    assert served.event_ids == [] and served.stats == b""
    _assert_same(spec, served, user)
