"""Pretraining on the platform's own event log: the reader (each event once), the generic world (time cuts, what
is left out), the generic pairs (answers recomputed from the raw events) and `training.pretrain --dataset offline`.

The log here is written with the log's own schema and file names (training.data.event_log), no Kafka: the real
path (Kafka -> eventlog service -> these files) is tests/integration/test_own_events_to_served_model.py.
"""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from training.data.event_log import SCHEMA, SegmentName, day_dir, day_of, read_events  # noqa: E402

DAY = 86400
T0 = 1_600_000_000  # a Sunday, 12:26 UTC
CATS = ["Drama", "Comedy", "Action", "Horror", "Documentary"]


def synthetic_events(n_users: int = 24, n_events: int = 30, seed: int = 0) -> list[dict]:
    """Event-contract records of a small made-up shop: ratings route to the three sources sources.yaml declares."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        fav = CATS[u % len(CATS)]
        for j in range(n_events):
            item = int(rng.integers(0, 60))
            cats = sorted({fav if rng.random() < 0.6 else CATS[int(rng.integers(0, len(CATS)))],
                           CATS[item % len(CATS)]})
            rating = int(rng.integers(1, 6))
            source = "liked" if rating >= 4 else "neutral" if rating == 3 else "disliked"
            out.append({"schema_version": 1, "event_id": f"e-{u}-{j}", "user_id": f"user-{u:03d}", "kind": "event",
                        "source": source, "ts": T0 + j * DAY + u * 60 + (j % 3) * 3600,
                        "text": f"Bought item {item} ({', '.join(cats)}), rated {rating}",
                        "attributes": {"rating": rating, "year": 1990 + item % 30, "genres": "|".join(cats),
                                       "item_id": f"sku-{item}", "title": f"Item {item}"}})
    return out


def write_log(root: Path, records: list[dict], topic: str = "qanchor.events.v1", partition: int = 0,
              first_offset: int = 0) -> None:
    """One segment per event day, as the eventlog service names and lays them out."""
    by_day: dict[str, list[dict]] = {}
    for off, r in enumerate(records, start=first_offset):
        by_day.setdefault(day_of(r["ts"]), []).append({
            "event_id": r["event_id"], "user_id": r["user_id"],
            "event_timestamp": datetime.fromtimestamp(r["ts"], tz=timezone.utc),
            "created": datetime.fromtimestamp(r["ts"] + 1, tz=timezone.utc), "ts": float(r["ts"]),
            "kind": r.get("kind", "event"), "source": r.get("source", ""), "text": r.get("text", ""),
            "vector": r.get("vector", []),
            "attributes": json.dumps(r["attributes"]) if r.get("attributes") else None,
            "topic": topic, "partition": partition, "offset": off})
    last = first_offset + len(records) - 1
    for day, rows in by_day.items():
        path = day_dir(root, day) / SegmentName(topic, partition, first_offset, last).filename
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)


# ---- the reader ----------------------------------------------------------------------------------------------
def test_read_events_keeps_each_event_once_in_time_order(tmp_path):
    ev = synthetic_events(3, 10)
    write_log(tmp_path, ev, partition=0, first_offset=0)
    # a replay after a crash wrote part of the same records again under another offset range of the partition
    write_log(tmp_path, ev[5:12], partition=0, first_offset=100)
    table = read_events(tmp_path)
    assert table.num_rows == len(ev)
    assert sorted(table.column("event_id").to_pylist()) == sorted(e["event_id"] for e in ev)
    ts = table.column("ts").to_pylist()
    assert ts == sorted(ts)
    # the copy kept is the first by Kafka position
    kept = {r["event_id"]: r["offset"] for r in table.select(["event_id", "offset"]).to_pylist()}
    assert all(off < 100 for off in kept.values())
    one = read_events(tmp_path, user_ids=["user-001"], start=T0 + 2 * DAY, end=T0 + 5 * DAY)
    assert set(one.column("user_id").to_pylist()) == {"user-001"}
    assert all(T0 + 2 * DAY <= t <= T0 + 5 * DAY for t in one.column("ts").to_pylist())
    assert read_events(tmp_path / "nothing-here").num_rows == 0


# ---- the world -----------------------------------------------------------------------------------------------
@pytest.fixture()
def log_root(tmp_path):
    ev = synthetic_events()
    # what the world must leave out: a tabular override, an event of a source sources.yaml does not declare
    ev.append({"schema_version": 1, "event_id": "tab-1", "user_id": "user-000", "kind": "tabular", "ts": T0 + 5,
               "vector": [0.0] * 400})
    ev.append({"schema_version": 1, "event_id": "x-1", "user_id": "user-000", "kind": "event", "source": "wishlist",
               "ts": T0 + 7, "text": "Wished for item 1"})
    write_log(tmp_path / "log", ev)
    write_log(tmp_path / "log", ev[:40], first_offset=1000)  # replayed copies
    return tmp_path / "log"


def test_event_world_cuts_each_user_in_time_and_leaves_out_what_it_cannot_use(log_root):
    from training.data.event_world import build_event_world

    world = build_event_world(log_root)
    assert world.n_users == 24 and len(world.timelines) == 24
    assert len(world.ts) == 24 * 30  # replayed copies, the tabular record and the unknown source are not events
    for u, tl in world.timelines.items():
        assert len(tl.history) == 24 and len(tl.future) == 6  # 80% of 30, every event in its own second
        assert world.ts[tl.history].max() < tl.cutoff_ts <= world.ts[tl.future].min()
    assert set(world.split.values()) <= {"train", "val", "test"}
    assert world.user_ids == [f"user-{i:03d}" for i in range(24)]
    assert world.tabular.shape == (24, 16) and np.isfinite(world.tabular).all()  # the standardised statistics
    # a global cutoff: history before it, future at or after it, for every user
    cut = T0 + 20 * DAY
    glob = build_event_world(log_root, cutoff=cut)
    for tl in glob.timelines.values():
        assert glob.ts[tl.history].max() < cut <= glob.ts[tl.future].min()
        assert len(tl.history) == 20 and len(tl.future) == 10
    with pytest.raises(ValueError, match="cutoff"):
        build_event_world(log_root, cutoff=T0 + 29 * DAY + 7200)  # too few future events left for anyone


def test_events_of_one_second_keep_their_log_order_as_ingest_does(tmp_path):
    """Ingest keeps a user's same-second events in log order (services/ingest/transform.py), so the world's timeline
    must too: event ids that sort the other way round do not reorder the prefix training reads."""
    from training.data.event_world import build_event_world

    ev = synthetic_events(n_users=2, n_events=30)
    burst = [r for r in ev if r["user_id"] == "user-000"][:5]
    for j, r in enumerate(burst):  # five events in one second, ids descending in log order
        r["ts"], r["event_id"] = burst[0]["ts"], f"z-{9 - j}"
    write_log(tmp_path / "log", ev)
    world = build_event_world(tmp_path / "log")
    tl = world.timelines[world.user_ids.index("user-000")]
    got = [world.texts[world.text_of_row[r]] for r in tl.history[:5]]
    assert got == [r["text"] for r in burst]


def test_dense_vector_statistics_are_the_ones_ingest_computes_from_the_raw_attributes(log_root):
    from training.data.event_world import build_event_world
    from training.data.features import user_aggregates
    from training.data.stats import StatsAggregate

    world = build_event_world(log_root)
    spec = world.feature_spec.statistics
    ev = {e["event_id"]: e for e in synthetic_events()}
    u = world.users()[3]
    uid = world.user_ids[u]
    hist_ts = set(world.ts[world.timelines[u].history].tolist())
    mine = sorted((e for e in ev.values() if e["user_id"] == uid and e["ts"] in hist_ts), key=lambda e: e["ts"])
    values = [spec.event_values(e["attributes"]) for e in mine]
    expect = StatsAggregate.of_events(spec, [e["ts"] for e in mine], [v[0] for v in values], [v[1] for v in values],
                                      [v[2] for v in values])
    np.testing.assert_allclose(user_aggregates(world)[u].raw_stats(spec), expect.raw_stats(spec))


# ---- the pairs -----------------------------------------------------------------------------------------------
def test_event_pairs_answer_from_the_right_window_and_need_no_dataset_vocabulary(log_root):
    from training.data.event_pairs import FUTURE_EVENT_TOPICS, build_event_pairs, event_window
    from training.data.event_world import build_event_world
    from training.data.pairs import FUTURE_QUERY

    world = build_event_world(log_root)
    pairs = build_event_pairs(world, top_k=5)
    by_user = Counter(p.user for p in pairs)
    assert set(by_user) == set(world.users())
    u = world.users()[0]
    mine = [p for p in pairs if p.user == u]
    assert [p.query for p in mine if p.topic == "future_behaviour"] == [FUTURE_QUERY]
    assert {p.topic for p in mine if p.kind == "future"} >= {t.name for t in FUTURE_EVENT_TOPICS}
    assert sum(p.kind == "qa" for p in mine) == 5
    f = event_window(world, u, "future")
    act = next(p for p in mine if p.topic == "future_activity")
    assert act.facts["count"] == f.n == 6
    src = next(p for p in mine if p.topic == "future_sources")
    assert sum(src.facts.values()) == f.n
    expect_sources = Counter(world.sources.names[i] for i in world.source_of_row[world.timelines[u].future])
    assert {k: v for k, v in src.facts.items() if v} == dict(expect_sources)
    items = next(p for p in mine if p.topic == "future_items")
    fut_labels = {world.item_labels[i] for i in world.item[world.timelines[u].future]}
    assert items.facts["items"] and set(items.facts["items"]) <= fut_labels  # titles of future events only
    declared = [s.description for s in world.sources.sources]  # sources.yaml's own words may name the domain
    for p in pairs:
        text = p.query + p.answer
        for d in declared:
            text = text.replace(d, "")
        assert "movie" not in text.lower() and "genre" not in text.lower()  # no MovieLens vocabulary in the code
    # history answers do not change when the future does (no leak from the future window)
    qa_before = {(p.user, p.topic): p.answer for p in pairs if p.kind == "qa"}
    world.rating[world.timelines[u].future] = 1.0
    qa_after = {(p.user, p.topic): p.answer for p in build_event_pairs(world, top_k=5) if p.kind == "qa"}
    assert qa_before == qa_after


# ---- pretraining on the log ----------------------------------------------------------------------------------
@pytest.mark.model
def test_pretrain_offline_trains_on_the_log_and_ships_its_normalisation(log_root, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from training import pretrain
    from training.artifacts import load_checkpoint
    from training.data.stats import Normalisation

    def fake_vectors(texts, name, progress=True):  # the loop and the data are under test, not the encoder
        assert name == "offline"
        return np.random.default_rng(0).standard_normal((len(texts), 384)).astype(np.float16)

    monkeypatch.setattr(pretrain, "cached_text_vectors", fake_vectors)
    out = tmp_path / "run"
    args = ["--config", "tiny", "--dataset", "offline", "--log-root", str(log_root), "--steps", "2",
            "--batch-size", "4", "--out", str(out), "--device", "cpu", "--top-k", "3", "--eval-pairs", "4",
            "--set", "optim.chunk_size=2"]
    assert pretrain.main(args) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "contrastive" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    model, cfg, extra = load_checkpoint(out / "checkpoint")
    assert cfg.input.source_k == {"liked": 32, "neutral": 16, "disliked": 16} and cfg.input.d_tab == 400
    norm = Normalisation.load(out / "checkpoint" / "normalisation.json")
    assert len(norm.stats_mean) == 16
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert "offline" in json.dumps(manifest)
    # the users it was pretrained on, by their events (an evaluation refuses to test on them)
    from training.data.event_world import build_event_world
    from training.data.identity import fingerprints
    from training.data.world import WorldConfig
    from training.normalisation import checkpoint_train_users

    world = build_event_world(log_root, WorldConfig(dataset="offline"))
    assert checkpoint_train_users(out / "checkpoint") == fingerprints(world, world.users("train"))
    assert len(world.users("train")) > 0
    # a cutoff given as an ISO date is the same cut as its unix seconds
    assert pretrain.parse_cutoff("2020-09-13") == pretrain.parse_cutoff(str(T0 - T0 % DAY)) == T0 - T0 % DAY
    with pytest.raises(SystemExit, match="cutoff"):
        pretrain.parse_cutoff("next tuesday")
    with pytest.raises(SystemExit, match="^--as-of: 'soon' is not a time"):  # the flag the user gave is named
        pretrain.parse_cutoff("soon", "--as-of")
    # no log: a clear message, not a stack trace
    with pytest.raises(SystemExit):
        pretrain.main(["--config", "tiny", "--dataset", "offline", "--log-root", str(tmp_path / "none"),
                       "--out", str(tmp_path / "x")])
