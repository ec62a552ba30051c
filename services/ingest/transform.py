"""Pure ingest logic: which events a user still needs, and the user's features after applying them.

No Kafka, Feast or Triton here, so every rule (windowing, last-K, idempotence) is unit-tested in isolation.

Idempotence (docs/ingest.md, "Effectively once"): a user's `feature_version` *is* the position of the last event
applied to that user, `VERSION_FLAG | partition << 40 | (offset + 1)`, written in the same row as the features.
An event at (partition, offset) is applied iff offset + 1 is above the stored position, so a batch replayed
after a crash (pushed but not committed, or half pushed) skips exactly what already landed. Versions stay
strictly increasing per user (offsets grow within a partition), which is all the serving cache key needs.

Statistics (`tabular`): every applied behaviour event also updates the user's sufficient aggregates
(training.data.stats, the same code training derives the dense user vector with), stored in the same row
(`stats_state`), so the position test that keeps the events once keeps the aggregates once. `tabular` is then the
standardised vector of those aggregates, with the model's normalisation constants; without constants it is left as
it was. A producer's `kind: tabular` record is an explicit override: it holds until the user's next behaviour event.

Windowing is on *event time*: a source keeps its newest K events whose ts is within `window_s` of the user's
newest event. Using event time (not the wall clock) makes the result a pure function of the event sequence, so
a crash-and-replay and a clean replay give identical features.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from services.common.features import (VECTOR_DTYPE, FeatureSpec, Normalisation, SourceEvents, StatsAggregate,
                                      UserFeatures, load_feature_spec, window_start)
from services.ingest.schema import Event

log = logging.getLogger(__name__)

# Bit 62 marks a version written by ingest; versions without it (a backfill's 1, 2, ...) carry no position.
VERSION_FLAG = 1 << 62
OFFSET_BITS = 40  # 10^12 records per partition before the layout runs out
PARTITION_BITS = 21


@dataclass(frozen=True, order=True)
class Position:
    """Where an event sits in the log; one user's events all share a partition (record key = user_id)."""

    partition: int
    offset: int


def encode_version(pos: Position) -> int:
    if not (0 <= pos.partition < (1 << PARTITION_BITS)) or not (0 <= pos.offset < (1 << OFFSET_BITS) - 1):
        raise ValueError(f"position {pos} does not fit the feature_version layout")
    return VERSION_FLAG | (pos.partition << OFFSET_BITS) | (pos.offset + 1)


def decode_version(version: int) -> Position | None:
    """The last applied position, or None when the version was not written by ingest (or is 0)."""
    if version < VERSION_FLAG:
        return None
    rest = version - VERSION_FLAG
    offset_plus_1 = rest & ((1 << OFFSET_BITS) - 1)
    return Position(partition=rest >> OFFSET_BITS, offset=offset_plus_1 - 1)


def already_applied(stored_version: int, pos: Position) -> bool:
    """True when the event at `pos` is part of the stored features (so applying it again would double it)."""
    last = decode_version(stored_version)
    # A different partition means the topic was re-partitioned: the stored mark says nothing about this log.
    return last is not None and last.partition == pos.partition and pos.offset <= last.offset


@dataclass(frozen=True)
class IngestSpec:
    """Feature schema plus the ingest-only knobs (per-source window), all from sources.yaml."""

    features: FeatureSpec
    # Source name -> seconds of event time kept behind the user's newest event.
    window_s: Mapping[str, float]
    # Event ids remembered per user (in the row itself, with their event times) to apply a re-sent event once: a
    # producer that retries a send, or replays a history, puts the same event_id at a new offset, which the position
    # test alone would apply twice. An unknown id at or before the newest time the row has forgotten is dead-lettered.
    recent_ids: int = 256
    # The model's train-user moments (the checkpoint's normalisation.json); None = `tabular` is not derived.
    normalisation: Normalisation | None = None

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.features.sources)

    def k(self, source: str) -> int:
        return self.features.source(source).k

    @classmethod
    def of(cls, features: FeatureSpec) -> "IngestSpec":
        return cls(features=features, window_s={s.name: s.window_days * 86400.0 for s in features.sources})


def load_ingest_spec(path: Path | str | None = None) -> IngestSpec:
    """sources.yaml through the one schema parser (`load_feature_spec`), with each source's window in seconds."""
    return IngestSpec.of(load_feature_spec(path))


def load_normalisation(path: Path | None, spec: IngestSpec) -> Normalisation | None:
    """The model's constants for deriving `tabular`, checked against sources.yaml; None (logged once) without them."""
    stats = spec.features.statistics
    if stats is None:
        log.warning("tabular statistics not derived: sources.yaml has no `statistics:` section; add one (see "
                    "feature_repo/sources.yaml) or let producers send kind=tabular records")
        return None
    if path is None or not Path(path).is_file():
        log.warning("tabular statistics not derived: no normalisation constants; set INGEST_NORMALISATION to the "
                    "served model's normalisation.json (python -m training.normalisation writes it for a checkpoint)."
                    " Until then tabular stays empty (the model's cold start); aggregates are still kept",
                    extra={"path": str(path) if path else ""})
        return None
    norm = Normalisation.load(path)
    norm.check(stats, spec.features.encoder_dim, str(path))
    log.info("tabular statistics derived from events", extra={"path": str(path), "statistics": len(norm.names)})
    return norm


@dataclass
class Entry:
    """One stored event of a source; `vector` is None until the encoder has run for a new event."""

    ts: int
    text: str
    vector: np.ndarray | None


@dataclass
class UserUpdate:
    """A user's features after a batch, before new texts are encoded."""

    user_id: str
    sources: dict[str, list[Entry]]
    tabular: np.ndarray
    version: int
    # Events applied / skipped as already applied, and the event times of the applied ones (freshness).
    applied: int = 0
    skipped: int = 0
    applied_ts: list[float] = field(default_factory=list)
    # Log positions of the applied events (ingest latency is measured from their Kafka record time).
    applied_positions: list[Position] = field(default_factory=list)
    # The user's remembered applied event ids in arrival order (stored with the row; duplicates are checked against
    # it; `remember` picks them), their event times, and the newest event time among the ids forgotten
    # (UserFeatures.ids_floor).
    event_ids: list[str] = field(default_factory=list)
    event_ts: list[int] = field(default_factory=list)
    ids_floor: int = 0
    # Behaviour events not applied because their id is unknown and their time is at or before ids_floor: each may
    # be a re-send of a forgotten event, so applying it could count it twice. The consumer dead-letters them.
    beyond_memory: list[Position] = field(default_factory=list)
    # Aggregates before this batch, and the applied behaviour events still to add to them (their vectors are
    # needed, so they are added in `to_features`).
    stats: StatsAggregate = field(default_factory=StatsAggregate)
    stat_events: list[Event] = field(default_factory=list)
    # True when the batch ends with a producer's `kind: tabular` record: it overrides the derived vector.
    tabular_override: bool = False

    def texts_to_encode(self) -> list[str]:
        kept = [e.text for entries in self.sources.values() for e in entries if e.vector is None]
        # With statistics, every applied event's vector joins the user's mean vector, even one cut by last-K.
        return list(dict.fromkeys(kept + [e.text for e in self.stat_events]))

    def derive(self, vectors: Mapping[str, np.ndarray], spec: IngestSpec) -> tuple[StatsAggregate, np.ndarray]:
        """The aggregates after this batch and the `tabular` to store (derived unless overridden or no constants)."""
        stats_spec = spec.features.statistics
        if stats_spec is None or not self.stat_events:
            return self.stats, self.tabular
        values = [stats_spec.event_values(e.attributes) for e in self.stat_events]
        vecs = np.stack([np.asarray(vectors[e.text], VECTOR_DTYPE) for e in self.stat_events])  # [n, d], as stored
        new = StatsAggregate.of_events(stats_spec, [e.ts for e in self.stat_events], [v[0] for v in values],
                                       [v[1] for v in values], [v[2] for v in values], vecs)
        agg = self.stats.merge(new, stats_spec)
        if self.tabular_override or spec.normalisation is None:
            return agg, self.tabular
        dense = spec.normalisation.dense(agg, stats_spec)
        return agg, self.tabular if dense is None else dense

    def to_features(self, vectors: Mapping[str, np.ndarray], spec: IngestSpec, updated_at: float) -> UserFeatures:
        """Fill the new entries from `vectors` (text -> [encoder_dim]) and build the row to write."""
        dim = spec.features.encoder_dim
        out: dict[str, SourceEvents] = {}
        for name, entries in self.sources.items():
            mat = np.zeros((len(entries), dim), dtype=VECTOR_DTYPE)  # [n, d]
            for i, e in enumerate(entries):
                vec = e.vector if e.vector is not None else vectors.get(e.text)
                if vec is None:
                    raise KeyError(f"no vector for text {e.text!r:.60} of user {self.user_id!r}; encode it first")
                mat[i] = vec
            out[name] = SourceEvents(texts=[e.text for e in entries], vectors=mat,
                                     timestamps=np.asarray([e.ts for e in entries], dtype=np.int64))
        stats, tabular = self.derive(vectors, spec)
        return UserFeatures(user_id=self.user_id, sources=out, tabular=tabular, feature_version=self.version,
                            updated_at=updated_at, event_ids=list(self.event_ids), event_ts=list(self.event_ts),
                            ids_floor=self.ids_floor, stats=stats.to_bytes())


def _entries(current: UserFeatures | None, spec: IngestSpec) -> dict[str, list[Entry]]:
    out: dict[str, list[Entry]] = {}
    for name in spec.source_names:
        ev = current.events(name, spec.features.encoder_dim) if current is not None and current.found else None
        if ev is None or len(ev) == 0:
            out[name] = []
            continue
        vecs = np.asarray(ev.vectors)
        out[name] = [Entry(ts=int(t), text=str(x), vector=vecs[i]) for i, (x, t) in
                     enumerate(zip(ev.texts, ev.timestamps))]
    return out


def remembered_ids(current: UserFeatures | None) -> tuple[list[str], list[int], int]:
    """The row's remembered event ids, their event times and its floor. A row written before the times were kept
    gives each id the row's newest event time: when such an id is forgotten the floor rises to that time, which
    may dead-letter a late event that was new, never apply a re-sent one twice."""
    if current is None or not current.found:
        return [], [], 0
    ids = list(current.event_ids)
    ts = [int(t) for t in current.event_ts]
    if len(ts) != len(ids):
        newest = max((int(t) for s in current.sources.values() for t in s.timestamps), default=0)
        ts = [newest] * len(ids)
    return ids, ts, int(current.ids_floor)


# One second's ids are kept whole up to this many times the memory (see `remember`).
SAME_SECOND_ROOM = 4


def remember(ids: list[str], ids_ts: list[int], floor: int, cap: int) -> tuple[list[str], list[int], int]:
    """The ids a row keeps after a batch (in arrival order), their event times and the row's new floor.

    Beyond `cap` ids the oldest event times are forgotten first (ties: the earlier arrival), and the floor rises
    to the newest forgotten time: every forgotten id is at or before it, so an unknown id after it is new. An
    unknown id at or before it is dead-lettered, so the cut does not split one second's ids when it can keep that
    second whole (at most SAME_SECOND_ROOM * cap ids in all): otherwise a producer sending more than `cap` events
    of one user within one second (a bulk import stamped with the send time) would have the rest of that second
    dead-lettered as possible re-sends.
    """
    n_forget = len(ids) - cap
    if n_forget <= 0:
        return ids, ids_ts, floor
    order = sorted(range(len(ids)), key=lambda i: (ids_ts[i], i))
    forget = set(order[:n_forget])
    edge = ids_ts[order[n_forget - 1]]
    if ids_ts[order[n_forget]] == edge:  # the cut falls inside one second
        older = {i for i in forget if ids_ts[i] < edge}
        if len(ids) - len(older) <= SAME_SECOND_ROOM * cap:
            forget = older
    keep = [i for i in range(len(ids)) if i not in forget]
    return [ids[i] for i in keep], [ids_ts[i] for i in keep], max([floor, *(ids_ts[i] for i in forget)])


def plan_user_update(current: UserFeatures | None, events: Sequence[tuple[Position, Event]],
                     spec: IngestSpec) -> UserUpdate | None:
    """Apply a user's events (in log order) to the stored features; None when every event was already applied.

    Events at or below the stored position are skipped (replay after a crash), and so is an event whose event_id
    the user's row already holds or an earlier event of the batch carried (a producer's retry, or a replayed
    history, at a new offset; the row keeps `spec.recent_ids` ids with their event times: `remember`). A behaviour
    event with an unknown id whose time is at or before the newest time of a forgotten id (`ids_floor`) is not
    applied but returned in `beyond_memory` for the dead-letter topic: it may be a re-send of a forgotten event, and
    a dead letter loses nothing where a second count would corrupt the aggregates. Behaviour events are inserted by
    event time (after equal times, so ties keep log order), then each source is cut to its window and its last K.
    Every fresh behaviour event also joins the user's statistics aggregates (added in `to_features`, once its text
    vector is known). A tabular record replaces the statistics vector until the next behaviour event re-derives it;
    the later one in the log wins (not the later event time: the store keeps no time for the vector, and log order
    is what makes replays agree whatever the batching).
    """
    if not events:
        return None
    user_id = events[0][1].user_id
    found = current is not None and current.found
    stored_version = current.feature_version if found else 0
    new = [(p, e) for p, e in events if not already_applied(stored_version, p)]
    ids, ids_ts, floor = remembered_ids(current)
    seen = set(ids)
    fresh, beyond = [], []
    for p, e in new:
        if e.event_id in seen:
            continue
        if e.kind == "event" and floor and int(e.ts) <= floor:  # maybe a forgotten one: never count it twice
            beyond.append(p)
            continue
        seen.add(e.event_id)
        fresh.append((p, e))
    skipped = len(events) - len(fresh) - len(beyond)
    if not fresh:
        return UserUpdate(user_id=user_id, sources={}, tabular=np.zeros(0, np.float32), version=stored_version,
                          applied=0, skipped=skipped, beyond_memory=beyond)
    sources = _entries(current, spec)
    tabular = (np.asarray(current.tabular, dtype=np.float32) if current is not None and current.found
               else np.zeros(0, np.float32))
    override = False
    for _, ev in fresh:
        override = ev.kind == "tabular"
        if override:
            tabular = np.asarray(ev.vector, dtype=np.float32)
            continue
        entries = sources[ev.source]
        ts = int(ev.ts)
        at = bisect.bisect_right([e.ts for e in entries], ts)
        entries.insert(at, Entry(ts=ts, text=ev.text, vector=None))
    newest = max((e.ts for entries in sources.values() for e in entries), default=None)
    if newest is not None:
        for name, entries in sources.items():  # entries are sorted by ts (inserted in place above)
            sources[name] = entries[window_start([e.ts for e in entries], newest, spec.window_s[name], spec.k(name)):]
    last = max(p for p, _ in new)  # re-sent events count as consumed too: a replay skips them by position
    ids, ids_ts, floor = remember(ids + [e.event_id for _, e in fresh], ids_ts + [int(e.ts) for _, e in fresh],
                                  floor, spec.recent_ids)
    return UserUpdate(user_id=user_id, sources=sources, tabular=tabular, version=encode_version(last),
                      applied=len(fresh), skipped=skipped, applied_ts=[e.ts for _, e in fresh],
                      applied_positions=[p for p, _ in fresh], event_ids=ids, event_ts=ids_ts,
                      ids_floor=floor, beyond_memory=beyond,
                      stats=StatsAggregate.from_bytes(current.stats) if found else StatsAggregate(),
                      stat_events=[e for _, e in fresh if e.kind == "event"] if spec.features.statistics else [],
                      tabular_override=override)
