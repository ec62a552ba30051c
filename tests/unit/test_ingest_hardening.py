"""No record can stop ingest: every malformed kind gets its DLQ reason, nothing else escapes the parser
(hypothesis), re-sent events apply once, a DLQ that cannot be written stops only its partitions, and a rule that
breaks on one user's data sends that user's records to the DLQ instead of failing the batch."""
from __future__ import annotations

import dataclasses
import json
import string
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("prometheus_client", reason="services env only (the worker's metrics)")

from malformed_records import TABULAR_DIM, corpus
from services.common.features import FeatureSpec, SourceSpec
from services.ingest import consumer as consumer_module
from services.ingest.consumer import IngestLimits, IngestWorker
from services.ingest.dlq import DeadLetterQueue
from services.ingest.encoder import CachedEncoder
from services.ingest.metrics import IngestMetrics
from services.ingest.schema import REASONS, Event, EventRejected, parse_event
from services.ingest.transform import (
    SAME_SECOND_ROOM, IngestSpec, Position, encode_version, plan_user_update, remember,
)
from test_ingest_worker import HashEncoder, MemProducer, MemStore, Rec

NOW = 1_800_000_000.0
SOURCES = ("liked", "neutral", "disliked")


def test_every_malformed_kind_gets_its_reason() -> None:
    kinds = corpus("user-1", NOW)
    assert len(kinds) >= 20
    for kind, key, value, reason in kinds:
        with pytest.raises(EventRejected) as info:
            parse_event(value, key, SOURCES, TABULAR_DIM, now=NOW)
        assert info.value.reason == reason, kind
        assert info.value.reason in REASONS and info.value.detail, kind


# ---- the parser never raises anything but EventRejected --------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
fields = st.fixed_dictionaries({}, optional={
    "schema_version": st.sampled_from([1, 2, "1", True, None]), "event_id": st.text(max_size=20) | st.integers(),
    "user_id": st.text(max_size=20) | st.integers() | st.none(), "kind": st.sampled_from(["event", "tabular", "x"]),
    "source": st.sampled_from([*SOURCES, "pages", ""]) | st.text(max_size=5), "text": st.text(max_size=30),
    "ts": st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=5),
    "vector": st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(), max_size=5),
    "attributes": json_values})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.binary(max_size=300) | st.none(), key=st.binary(max_size=8) | st.none())
def test_arbitrary_bytes_never_escape_the_parser(value: bytes | None, key: bytes | None) -> None:
    try:
        parse_event(value, key, SOURCES, 4, now=NOW)
    except EventRejected as exc:
        assert exc.reason in REASONS


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=fields, use_key=st.booleans(), raw_escape=st.booleans())
def test_arbitrary_event_shaped_json_never_escapes_the_parser(obj: dict, use_key: bool, raw_escape: bool) -> None:
    value = json.dumps(obj, ensure_ascii=raw_escape, allow_nan=True).encode("utf-8", "surrogatepass")
    uid = obj.get("user_id")
    key = uid.encode("utf-8", "surrogatepass") if use_key and isinstance(uid, str) else None
    try:
        ev = parse_event(value, key, SOURCES, 4, now=NOW)
    except EventRejected as exc:
        assert exc.reason in REASONS
        return
    # What passes is clean: encodable strings, finite bounded numbers, a ts not in the future.
    ev.to_json().decode("utf-8")
    assert 0 <= ev.ts <= NOW + 300 and all(abs(x) <= 1e12 for x in ev.vector)


ids = st.text(alphabet=string.ascii_letters + string.digits + "-_:", min_size=1, max_size=12)
events = st.builds(
    lambda eid, src, ts, text: Event(event_id=eid, user_id="u", kind="event", ts=float(ts), source=src, text=text),
    ids, st.sampled_from(["a", "b"]), st.integers(0, 10_000), st.sampled_from(["t1", "t2", "t3", "t4"]))


@settings(max_examples=300, deadline=None)
@given(evs=st.lists(events, min_size=1, max_size=30), valid=st.booleans())
def test_valid_events_round_trip(evs: list[Event], valid: bool) -> None:
    for ev in evs:
        assert parse_event(ev.to_json(), b"u", {"a", "b"}, 2, now=NOW) == ev


# ---- the transform: batching, crash replays and re-sent events do not change the result ----------------------
SPEC = IngestSpec(features=FeatureSpec(sources=(SourceSpec("a", 3), SourceSpec("b", 2)), tabular_dim=2),
                  window_s={"a": 5_000.0, "b": 8_000.0}, recent_ids=64)


def _vectors(texts):  # deterministic encoder
    return {t: np.full(384, (hash(t) % 97) / 97, np.float16) for t in texts}


def _apply(log: list[tuple[Position, Event]], cuts: list[int], replays: list[int]):
    """Apply `log` in batches cut at `cuts`; after batch i, replay it `replays[i]` times (crash before commit)."""
    row = None
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(log))), len(log)]
    for i in range(len(bounds) - 1):
        batch = log[bounds[i]:bounds[i + 1]]
        for _ in range(1 + (replays[i] if i < len(replays) else 0)):
            upd = plan_user_update(row, batch, SPEC)
            if upd is not None and upd.applied:
                row = upd.to_features(_vectors(upd.texts_to_encode()), SPEC, updated_at=1.0)
    return row


def _summary(row):
    if row is None:
        return None
    return (row.feature_version, row.event_ids,
            {s: (v.texts, v.timestamps.tolist()) for s, v in sorted(row.sources.items())})


@settings(max_examples=200, deadline=None)
@given(evs=st.lists(events, min_size=1, max_size=25, unique_by=lambda e: e.event_id),
       resend=st.lists(st.integers(0, 24), max_size=8), cuts=st.lists(st.integers(0, 40), max_size=6),
       replays=st.lists(st.integers(0, 2), max_size=7))
def test_batching_replays_and_resends_apply_each_event_once(evs, resend, cuts, replays) -> None:
    log = [(Position(0, i), e) for i, e in enumerate(evs)]
    once = _apply(log, [], [])
    # A producer re-sends some events (same event_id) at later offsets.
    noisy = list(log)
    for j in resend:
        noisy.append((Position(0, len(noisy)), evs[j % len(evs)]))
    got = _apply(noisy, cuts, replays)
    assert _summary(got)[1:] == _summary(once)[1:]  # same events, ids and features
    # The version only moves forward, up to the last offset written (a batch of re-sends alone writes nothing).
    assert once.feature_version <= got.feature_version <= encode_version(noisy[-1][0])
    for s, v in got.sources.items():
        assert len(v.texts) <= SPEC.k(s) and v.timestamps.tolist() == sorted(v.timestamps.tolist())


SMALL = dataclasses.replace(SPEC, recent_ids=4)  # a memory shorter than the histories below


def _apply_batches(row, log, cuts, spec):
    """-> (row, events applied, positions returned as beyond the id memory)."""
    applied, beyond = 0, []
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(log))), len(log)]
    for i in range(len(bounds) - 1):
        upd = plan_user_update(row, log[bounds[i]:bounds[i + 1]], spec)
        if upd is None:
            continue
        beyond += upd.beyond_memory
        if upd.applied:
            applied += upd.applied
            row = upd.to_features(_vectors(upd.texts_to_encode()), spec, updated_at=1.0)
    return row, applied, beyond


@settings(max_examples=300, deadline=None)
@given(gaps=st.lists(st.integers(1, 500), min_size=1, max_size=20), ties=st.lists(st.booleans(), max_size=20),
       srcs=st.lists(st.sampled_from(["a", "b"]), min_size=20, max_size=20),
       cuts=st.lists(st.integers(0, 20), max_size=5), again=st.lists(st.integers(0, 20), max_size=5),
       late=st.one_of(st.none(), st.permutations(range(20))))
def test_a_replayed_history_longer_than_the_id_memory_is_never_applied_twice(gaps, ties, srcs, cuts, again,
                                                                              late) -> None:
    ts = np.cumsum([0 if i < len(ties) and ties[i] else g for i, g in enumerate(gaps)]) + 1_000
    evs = [Event(event_id=f"e{i}", user_id="u", kind="event", ts=float(t), source=srcs[i], text=f"t{i}")
           for i, t in enumerate(ts)]
    if late is not None:  # sent out of event-time order: some events late
        evs = [evs[i] for i in late if i < len(evs)]
    log = [(Position(0, i), e) for i, e in enumerate(evs)]
    row, applied, beyond = _apply_batches(None, log, cuts, SMALL)
    largest_second = max(np.unique(ts, return_counts=True)[1])
    if late is None and largest_second <= (SAME_SECOND_ROOM - 1) * SMALL.recent_ids + 1:
        # a history in event-time order loses nothing, however long, ties included while one second's ids fit
        assert applied == len(evs) and beyond == []
    # The producer replays the whole history at new offsets: every event is known or dead-lettered, none counted twice.
    resent = [(Position(0, len(log) + i), e) for i, e in enumerate(evs)]
    again_row, again_applied, again_beyond = _apply_batches(row, resent, again, SMALL)
    assert again_applied == 0
    assert _summary(again_row) == _summary(row)
    assert len(again_beyond) <= max(0, len(evs) - SMALL.recent_ids)
    room = SAME_SECOND_ROOM * SMALL.recent_ids
    assert min(applied, SMALL.recent_ids) <= len(row.event_ids) == len(row.event_ts) <= room


def test_one_seconds_ids_are_kept_whole_while_they_fit() -> None:
    # A bulk import stamped with its send time: 12 events of one user in one second, then later seconds' events.
    seconds = [2_000] * 12 + [2_001] * 2 + [2_002] * 3
    log = [(Position(0, i), Event(event_id=f"e{i}", user_id="u", kind="event", ts=float(t), source="a",
                                  text=f"t{i}")) for i, t in enumerate(seconds)]
    row, applied, beyond = _apply_batches(None, log[:14], [5, 9], SMALL)
    # With the memory of 4 cut inside second 2,000 (the rule before), e5..e11 went to the DLQ as possible re-sends.
    assert (applied, beyond) == (14, []) and len(row.event_ids) == 14 and row.ids_floor == 0
    row, applied, beyond = _apply_batches(row, log[14:], [], SMALL)
    assert (applied, beyond) == (3, [])
    assert row.event_ids == ["e12", "e13", "e14", "e15", "e16"] and row.ids_floor == 2_000  # forgotten whole
    ids, ts, floor = remember([f"e{i}" for i in range(20)], [2_000] * 20, 0, 4)  # 20 > 4 x 4 ids: cannot fit
    assert (ids, ts, floor) == (["e16", "e17", "e18", "e19"], [2_000] * 4, 2_000)
    # The oldest event times are forgotten first, whatever the arrival order; ties by arrival.
    assert remember(["a", "b", "c", "d"], [30, 10, 20, 10], 5, 2) == (["a", "c"], [30, 20], 10)


def test_a_row_from_before_event_times_were_kept_forgets_conservatively() -> None:
    log = [(Position(0, i), Event(event_id=f"e{i}", user_id="u", kind="event", ts=float(1_000 + i), source="a",
                                  text=f"t{i}")) for i in range(4)]
    row, _, _ = _apply_batches(None, log, [], SMALL)
    old = dataclasses.replace(row, event_ts=[], ids_floor=0)  # as an older ingest wrote it
    late = Event(event_id="late", user_id="u", kind="event", ts=1_002.0, source="a", text="late")
    new = [Event(event_id=f"new{i}", user_id="u", kind="event", ts=2_000.0 + i, source="a", text=f"new{i}")
           for i in range(4)]
    upd = plan_user_update(old, [(Position(0, 4 + i), e) for i, e in enumerate([late, *new])], SMALL)
    assert upd.applied == 5 and upd.beyond_memory == []  # nothing forgotten yet: nothing to mistake
    # e0..e3 and `late` are forgotten now; the old ids, whose times the row did not keep, each count as its newest
    # event's (1,003), so the floor is 1,003 although e0 was at 1,000
    assert upd.event_ids == ["new0", "new1", "new2", "new3"] and upd.ids_floor == 1_003
    after = upd.to_features(_vectors(upd.texts_to_encode()), SMALL, updated_at=1.0)
    upd = plan_user_update(after, [(Position(0, 9), log[0][1]), (Position(0, 10), late)], SMALL)
    assert upd.applied == 0 and upd.beyond_memory == [Position(0, 9), Position(0, 10)] and upd.skipped == 0


# ---- the worker --------------------------------------------------------------------------------------------
def _worker(store, producer=None, recent_ids=256, **limits):
    spec = IngestSpec.of(FeatureSpec(sources=tuple(SourceSpec(s, 8) for s in SOURCES), tabular_dim=TABULAR_DIM))
    return IngestWorker(FakeConsumer(), DeadLetterQueue(producer or MemProducer(), "dlq", "g", time.time), store,
                        CachedEncoder(HashEncoder(), 1000), dataclasses.replace(spec, recent_ids=recent_ids),
                        IngestMetrics.create(), IngestLimits(max_poll_interval_s=300, retry_backoff_s=0, **limits))


class FakeConsumer:  # the parts of KafkaConsumer run_batch touches
    def __init__(self) -> None:
        self.committed: dict[int, int] = {}
        self.paused: set[int] = set()
        self.seeks: dict[int, int] = {}

    def commit(self, offsets, timeout_ms=None) -> None:  # type: ignore[no-untyped-def]
        self.committed.update({tp.partition: om.offset for tp, om in offsets.items()})

    def assignment(self):  # type: ignore[no-untyped-def]
        from kafka.structs import TopicPartition
        return {TopicPartition("events", p) for p in range(4)}

    def seek(self, tp, offset) -> None:  # type: ignore[no-untyped-def]
        self.seeks[tp.partition] = offset

    def pause(self, *tps) -> None:  # type: ignore[no-untyped-def]
        self.paused |= {tp.partition for tp in tps}


def _good(user: str, i: int) -> bytes:
    return json.dumps({"schema_version": 1, "event_id": f"{user}-{i}", "user_id": user, "source": "liked",
                       "ts": time.time() - 100 + i, "text": f"item {i}"}).encode()


def test_malformed_records_between_good_ones_go_to_the_dlq_and_the_good_ones_apply() -> None:
    store, producer = MemStore(), MemProducer()
    w = _worker(store, producer)
    records, offset = [], 0
    for i, (_, key, value, _) in enumerate(corpus("bad-user", time.time())):
        records.append(Rec(0, offset, b"good", _good("good", i)))
        records.append(Rec(0, offset + 1, key, value))
        offset += 2
    result = w.run_batch(records)
    n = len(corpus("bad-user", time.time()))
    assert (result.applied, result.dlq) == (n, n)
    assert store.rows["good"].feature_version == encode_version(Position(0, offset - 2))
    reasons = Counter(dict(h)["qanchor.reason"].decode() for _, _, _, h in producer.sent)
    assert reasons == Counter(reason for *_, reason in corpus("bad-user", time.time()))
    assert all(value is not None for _, _, value, _ in producer.sent)  # Kafka refuses a null key AND value
    assert w.consumer.committed == {0: offset}


def test_a_resent_event_applies_once() -> None:
    store = MemStore()
    w = _worker(store)
    first = [Rec(0, i, b"u", _good("u", i)) for i in range(3)]
    w.run_batch(first)
    before = store.rows["u"]
    w.run_batch([Rec(0, 3, b"u", _good("u", 1)), Rec(0, 4, b"u", _good("u", 2))])  # the producer retried
    after = store.rows["u"]
    assert after.sources["liked"].texts == before.sources["liked"].texts
    assert after.event_ids == ["u-0", "u-1", "u-2"]


def test_a_history_replayed_beyond_the_id_memory_goes_to_the_dlq_not_into_the_row() -> None:
    store, producer = MemStore(), MemProducer()
    w = _worker(store, producer, recent_ids=4)
    w.run_batch([Rec(0, i, b"u", _good("u", i)) for i in range(10)])
    before = store.rows["u"]
    result = w.run_batch([Rec(0, 10 + i, b"u", _good("u", i)) for i in range(10)])  # the producer replays it all
    after = store.rows["u"]
    assert (result.applied, result.duplicates, result.dlq) == (0, 4, 6)
    assert after.sources["liked"].texts == before.sources["liked"].texts and after.event_ids == before.event_ids
    headers = [dict(h) for _, _, _, h in producer.sent]
    assert {h["qanchor.reason"].decode() for h in headers} == {"beyond_dedup_memory"}
    assert w.consumer.committed == {0: 20}


class BrokenDlq(MemProducer):
    def send(self, topic, key=None, value=None, headers=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("TopicAuthorizationFailed: qanchor.events.dlq.v1")


def test_a_dlq_that_cannot_be_written_stops_its_partition_and_the_others_go_on() -> None:
    store = MemStore()
    w = _worker(store, BrokenDlq(), dlq_attempts=2)
    records = [Rec(0, 0, b"a", _good("a", 0)), Rec(0, 1, b"a", b"{broken"), Rec(1, 0, b"b", _good("b", 0)),
               Rec(1, 1, b"b", _good("b", 1))]
    w.run_batch(records)
    assert w.consumer.paused == {0} and w.consumer.seeks == {0: 0}  # held at the batch start, nothing committed
    assert w.consumer.committed == {1: 2} and "b" in store.rows
    assert w.metrics.registry.get_sample_value("qanchor_ingest_partition_stopped", {"partition": "0"}) == 1


def test_a_rule_that_breaks_on_one_users_data_dead_letters_that_user(monkeypatch: pytest.MonkeyPatch) -> None:
    real = consumer_module.plan_user_update

    def plan(current, events, spec):  # type: ignore[no-untyped-def]
        if events[0][1].user_id == "cursed":
            raise OverflowError("a rule this data breaks")
        return real(current, events, spec)

    monkeypatch.setattr(consumer_module, "plan_user_update", plan)
    store, producer = MemStore(), MemProducer()
    w = _worker(store, producer)
    result = w.run_batch([Rec(0, 0, b"cursed", _good("cursed", 0)), Rec(0, 1, b"fine", _good("fine", 0))])
    assert (result.applied, result.dlq) == (1, 1) and "fine" in store.rows and "cursed" not in store.rows
    assert dict(producer.sent[0][3])["qanchor.reason"] == b"internal_error"


class RebalancingConsumer(FakeConsumer):
    """kafka-python retries a commit during a rebalance until its timeout (the rejoin completes only in poll)."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[int | None] = []

    def commit(self, offsets, timeout_ms=None) -> None:  # type: ignore[no-untyped-def]
        from kafka.errors import KafkaTimeoutError

        self.timeouts.append(timeout_ms)
        raise KafkaTimeoutError("Timeout waiting for OffsetCommit")


def test_a_commit_a_rebalance_holds_up_is_bounded_and_leaves_the_batch_to_the_replay() -> None:
    store = MemStore()
    w = _worker(store, commit_timeout_ms=1234)
    w.consumer = RebalancingConsumer()
    result = w.run_batch([Rec(0, i, b"u", _good("u", i)) for i in range(3)])
    assert result.applied == 3 and store.rows["u"].event_ids == ["u-0", "u-1", "u-2"]  # the batch's effect stays
    assert w.consumer.timeouts == [1234] and w.consumer.committed == {}  # one bounded try, nothing committed
    assert w.metrics.registry.get_sample_value("qanchor_ingest_batch_failures_total",
                                               {"error": "commit_failed"}) == 1
    # The partition's next owner replays the batch from the last commit: a no-op.
    w.consumer = FakeConsumer()
    again = w.run_batch([Rec(0, i, b"u", _good("u", i)) for i in range(3)])
    assert again.applied == 0 and store.rows["u"].event_ids == ["u-0", "u-1", "u-2"]
    assert w.consumer.committed == {0: 3}
