"""A user world read from the platform's own event log: any team's raw events, no dataset-specific code.

    world = build_event_world(Path("var/eventlog"))                        # per-user time split (80% history)
    world = build_event_world(Path("var/eventlog"), cutoff=1_000_000_000)  # one global time cutoff

The log (training.data.event_log, written by services/eventlog) holds every validated event once: user, time,
source, text and the producer's attributes. This module turns it into what pretraining reads (the same interface
as the MovieLens `UserWorld`: timelines, splits, texts, the dense user vector): behaviour events of the sources
`feature_repo/sources.yaml` declares, per user sorted by (time, log position), cut into a *history* window (the prefix
and statistics read only it) and a *future* window (pretraining answers about what happens next).

Two cuts (docs/own-data.md):
- `cutoff=None`: per user, at `history_frac` of their events, moved to a change of second so that no second is
  split (the MovieLens rule, training.data.world);
- `cutoff=T` (unix seconds): history = events before T, future = events at or after T, for every user alike (what
  a team with a live log wants: train on what happened before a date, answer about what came after).

What the attributes mean comes from sources.yaml's `statistics:` (rating, year, categories); an event's *item* is its
`item_id` attribute (the text when absent), shown as its `title` attribute when there is one (else the item id or
the text). Events of undeclared sources and `kind=tabular` overrides are left out and counted in the log line.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data.event_log import read_events
from training.data.sources import FeatureSpec, load_feature_spec
from training.data.world import SPLITS, Timeline, WorldConfig, _cut, user_split

log = logging.getLogger(__name__)


@dataclass
class EventWorld:
    cfg: WorldConfig
    sources: FeatureSpec  # sources.yaml: the sources (name, k), widths, statistics
    user_ids: list[str]  # user index -> the producer's user_id
    timelines: dict[int, Timeline]  # user index -> rows of its history and future windows, oldest first
    split: dict[int, str]
    excluded: dict[int, str]
    texts: list[str]  # distinct event texts
    text_of_row: np.ndarray  # [N] int32 index into texts
    source_of_row: np.ndarray  # [N] int8 index into sources.names
    ts: np.ndarray  # [N] int64 unix seconds
    rating: np.ndarray  # [N] float64, nan where the event has no rating attribute
    year: np.ndarray  # [N] float64, 0 where unknown
    categories: list[tuple[str, ...]]  # [N]
    item: np.ndarray  # [N] int32 index into items
    items: list[str]  # distinct item keys
    item_labels: list[str]  # display label per item
    cutoff: float | None = None
    tabular: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    @property
    def feature_spec(self) -> FeatureSpec:
        return self.sources

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def item_of_row(self) -> np.ndarray:
        return self.item

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def category_names(self) -> list[str]:
        """Every category an event of the log carries (the `categories` statistic's values), sorted."""
        names = getattr(self, "_category_names", None)
        if names is None:
            names = self._category_names = sorted({c for cats in self.categories for c in cats})
        return names

    def user_id(self, user: int) -> str:
        return self.user_ids[user]

    def content_digest(self) -> str:
        """16 hex digits of sha256 over what a model and a probe read of this world: the users, every event's time,
        source, text and statistics' attributes, and each kept user's cut and split (a grown log, another cutoff,
        another split: another digest). Memoised: a world is not changed after it is built and filtered."""
        digest = getattr(self, "_content_digest", None)
        if digest is None:
            h = hashlib.sha256(json.dumps([self.user_ids, self.texts, self.categories]).encode())
            for arr in (self.ts, self.text_of_row, self.source_of_row, self.rating, self.year):
                h.update(np.ascontiguousarray(arr).tobytes())
            h.update(json.dumps([[u, len(t.history), self.split[u]] for u, t in sorted(self.timelines.items())])
                     .encode())
            digest = self._content_digest = h.hexdigest()[:16]
        return digest

    def users(self, split: str | None = None) -> list[int]:
        return sorted(u for u, s in self.split.items() if split is None or s == split)

    def row_ts(self, rows: np.ndarray) -> np.ndarray:
        """Unix seconds of some rows (the prefix's window reads only these)."""
        return self.ts[rows]

    def stats_columns(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, ...]]]:
        """(ts, ratings, years, categories) of some rows: what training.data.stats aggregates."""
        return self.ts[rows], self.rating[rows], self.year[rows], [self.categories[i] for i in rows]


def _attribute_columns(raw: list[str | None], spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray, list, list, list]:
    """Per event: rating, year, categories (as the statistics read them), item key and display label."""
    stats = spec.statistics
    n = len(raw)
    rating, year = np.full(n, np.nan), np.zeros(n)
    cats: list[tuple[str, ...]] = [()] * n
    item_key: list[str | None] = [None] * n
    label: list[str | None] = [None] * n
    for i, text in enumerate(raw):
        if not text:
            continue
        try:
            attrs = json.loads(text)
        except ValueError:
            continue  # ingest validated it; a damaged row counts as "no attributes"
        if not isinstance(attrs, dict):
            continue
        if stats is not None:
            rating[i], year[i], cats[i] = stats.event_values(attrs)
        iid, title = attrs.get("item_id"), attrs.get("title")
        if iid is not None and not isinstance(iid, bool):
            item_key[i] = str(iid)
        if isinstance(title, str) and title:
            label[i] = title
    return rating, year, cats, item_key, label


def build_event_world(log_root: Path, cfg: WorldConfig | None = None, cutoff: float | None = None,
                      spec: FeatureSpec | None = None) -> EventWorld:
    cfg = cfg or WorldConfig(dataset="offline")
    spec = spec or load_feature_spec()
    table = read_events(Path(log_root))
    if table.num_rows == 0:
        raise ValueError(f"the event log at {log_root} holds no events; is the eventlog service running and has it "
                         "flushed (qanchor stack status eventlog)? See docs/eventlog.md")
    cols = table.select(["user_id", "ts", "kind", "source", "text", "attributes", "partition", "offset"]).to_pydict()
    names = spec.names
    src_index = {n: i for i, n in enumerate(names)}
    keep = [i for i, (k, s) in enumerate(zip(cols["kind"], cols["source"])) if k == "event" and s in src_index]
    dropped_tabular = sum(k != "event" for k in cols["kind"])
    dropped_source = table.num_rows - len(keep) - dropped_tabular
    uid_all = [cols["user_id"][i] for i in keep]
    user_ids = sorted(set(uid_all))
    if cfg.max_users is not None:
        user_ids = user_ids[:cfg.max_users]
    u_index = {u: i for i, u in enumerate(user_ids)}
    keep = [i for i in keep if cols["user_id"][i] in u_index]
    user = np.array([u_index[cols["user_id"][i]] for i in keep], np.int64)
    ts = np.array([int(cols["ts"][i]) for i in keep], np.int64)
    partition = np.array([int(cols["partition"][i]) for i in keep], np.int64)
    offset = np.array([int(cols["offset"][i]) for i in keep], np.int64)
    # by user, then time, then log position: ingest keeps a user's events of one second in log order (a user's
    # events share a partition, keyed by user), so the prefix training reads is the one the feature store holds
    order = np.lexsort((offset, partition, ts, user))
    keep = [keep[i] for i in order]
    user, ts = user[order], ts[order]
    source = np.array([src_index[cols["source"][i]] for i in keep], np.int8)
    texts_raw = [cols["text"][i] or "" for i in keep]
    texts = sorted(set(texts_raw))
    t_index = {t: i for i, t in enumerate(texts)}
    text_of_row = np.array([t_index[t] for t in texts_raw], np.int32)
    rating, year, cats, item_key, label = _attribute_columns([cols["attributes"][i] for i in keep], spec)
    keys = [k if k is not None else t for k, t in zip(item_key, texts_raw)]
    items = sorted(set(keys))
    i_index = {k: i for i, k in enumerate(items)}
    item = np.array([i_index[k] for k in keys], np.int32)
    item_labels = list(items)
    for k, lab in zip(keys, label):  # a title wins over the item id; the text is the fallback key
        if lab is not None:
            item_labels[i_index[k]] = lab

    bounds = np.searchsorted(user, np.arange(len(user_ids) + 1))
    timelines, split, excluded = {}, {}, {}
    for u in range(len(user_ids)):
        rows = np.arange(bounds[u], bounds[u + 1], dtype=np.int64)
        if cutoff is None:
            if len(rows) < cfg.min_history + cfg.min_future:
                excluded[u] = f"too_few_events n={len(rows)}"
                continue
            c = _cut(ts[rows], cfg.history_frac, cfg.min_history, cfg.min_future)
            if c is None:
                excluded[u] = f"no_valid_cut n={len(rows)}"
                continue
        else:
            c = int(np.searchsorted(ts[rows], cutoff, side="left"))
            if c < cfg.min_history or len(rows) - c < cfg.min_future:
                excluded[u] = f"window_too_small history={c} future={len(rows) - c}"
                continue
        # a cutoff after the user's last event (an evaluation as of the end of the log) leaves the future empty
        timelines[u] = Timeline(rows[:c], rows[c:], int(ts[rows[c]]) if c < len(rows) else int(ts[rows[-1]]) + 1)
        split[u] = user_split(user_ids[u], cfg.split_salt, cfg.split_fracs)
    world = EventWorld(cfg, spec, user_ids, timelines, split, excluded, texts, text_of_row, source, ts, rating,
                       year, cats, item, items, item_labels, cutoff)
    if not timelines:
        raise ValueError(f"no user of the {len(user_ids)} in {log_root} has >= {cfg.min_history} history and "
                         f">= {cfg.min_future} future events" + (f" around cutoff {cutoff}" if cutoff else "") +
                         "; send more events, move --cutoff, or lower --min-history / --min-future")
    from training.data.features import fit_tabular  # late import: features needs the world types

    world.tabular = fit_tabular(world)
    counts = {s: len(world.users(s)) for s in SPLITS}
    log.info("event_world_built root=%s events=%d users=%d kept=%d excluded=%d texts=%d items=%d train=%d val=%d "
             "test=%d dropped_tabular=%d dropped_unknown_source=%d cutoff=%s", log_root, len(keep), len(user_ids),
             len(timelines), len(excluded), len(texts), len(items), counts["train"], counts["val"], counts["test"],
             dropped_tabular, dropped_source, cutoff)
    return world
