"""The feature schema, read from `feature_repo/sources.yaml`: which behaviour sources a user has, how many events
each keeps (K), over what event-time window, and the vector widths. Parsed here and nowhere else.

Torch-free and Feast-free (PyYAML and dataclasses only) on purpose: the services environment (gateway, ingest,
the Feast repository via `services.common.features`) and the model environment (training, Triton) both import
it, and `training/` never imports `services/`.

How a MovieLens rating maps onto the sources is a rule of the MovieLens world, not of the schema: `SourcesConfig`
pairs the schema with those rating ranges for training.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from training.data.stats import StatsSpec

# Paper: a 90-day behaviour window; sources.yaml may set `window_days` at the top level and per source.
DEFAULT_WINDOW_DAYS = 90.0
# Feature names besides the per-source ones (docs/features.md): ingest's bookkeeping, statistics, the version.
# `stats_state`: the sufficient aggregates the statistics derive from (training.data.stats), kept by ingest;
# `recent_event_ts` / `event_ids_floor`: the event times of the remembered ids and the newest time of a forgotten one.
INGEST_FIELDS = ("recent_event_ids", "recent_event_ts", "event_ids_floor", "stats_state")
STATS_FIELDS = ("tabular",)
META_FIELDS = ("feature_version", "updated_at")


def window_start(ts_sorted, newest: float, window_s: float, k: int) -> int:
    """Where a source's kept events begin: of its events sorted by time (oldest first), the newest `k` whose time is
    within `window_s` seconds of the user's newest event (`newest`, any source). The one rule ingest stores
    (services/ingest/transform.py) and training reads (training.data.collate.user_record) the prefix by."""
    return max(bisect.bisect_left(ts_sorted, newest - window_s), len(ts_sorted) - k)


def default_sources_path() -> Path:
    """`feature_repo/sources.yaml` of this checkout; `QANCHOR_SOURCES_YAML` overrides it (tests, other worlds)."""
    override = os.environ.get("QANCHOR_SOURCES_YAML")
    if override:
        return Path(override)
    # training/data/sources.py -> repo root; the editable install keeps this layout.
    return Path(__file__).resolve().parents[2] / "feature_repo" / "sources.yaml"


@dataclass(frozen=True)
class SourceSpec:
    # Source name; prefixes its feature names, so lowercase letters, digits and '_' only.
    name: str
    # Events kept per user (the newest K); the model pads to exactly K.
    k: int
    # What counts as an event of this source (documentation for the ingest rules).
    description: str = ""
    # Days of event time kept behind the user's newest event (ingest's window).
    window_days: float = DEFAULT_WINDOW_DAYS

    def __post_init__(self) -> None:
        if not self.name.replace("_", "").isalnum() or not self.name.islower() or self.name[0].isdigit():
            raise ValueError(f"source name {self.name!r}: use lowercase letters, digits and '_' (e.g. 'liked')")
        if self.k <= 0:
            raise ValueError(f"source {self.name!r}: k must be a positive number of events, got {self.k}")
        if self.window_days <= 0:
            raise ValueError(f"source {self.name!r} has window_days={self.window_days}; use a positive number "
                             "of days")

    @property
    def fields(self) -> tuple[str, str, str, str]:
        """Feature names of this source: texts, vectors, timestamps, count."""
        return (f"{self.name}_texts", f"{self.name}_vectors", f"{self.name}_timestamps", f"{self.name}_count")


@dataclass(frozen=True)
class FeatureSpec:
    # Sources in a fixed order (the model's source-token order follows it).
    sources: tuple[SourceSpec, ...]
    # Width of the dense statistics vector.
    tabular_dim: int
    # Sentence-encoder width; every stored event vector has it.
    encoder_dim: int = 384
    # Versioned FeatureService the gateway reads; renamed (v2, ...) on a breaking schema change.
    feature_service: str = "user_features_v1"
    # Which event attributes the statistics of `tabular` read; None = ingest derives no statistics.
    statistics: StatsSpec | None = None

    def __post_init__(self) -> None:
        names = [s.name for s in self.sources]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"sources must be a non-empty list of distinct names, got {names}")
        if self.tabular_dim < 0 or self.encoder_dim <= 0:
            raise ValueError("tabular_dim must be >= 0 and encoder_dim > 0")

    def source(self, name: str) -> SourceSpec:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"unknown source {name!r}; sources.yaml declares {[s.name for s in self.sources]}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def feature_names(self) -> list[str]:
        """Every feature of the FeatureService, in a stable order."""
        names = [f for s in self.sources for f in s.fields]
        return names + list(INGEST_FIELDS) + list(STATS_FIELDS) + list(META_FIELDS)


def load_feature_spec(path: Path | str | None = None) -> FeatureSpec:
    """Parse sources.yaml (default: `default_sources_path()`); ValueError names the file and what to fix."""
    path = Path(path) if path is not None else default_sources_path()
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"feature sources file {path} not found; set QANCHOR_SOURCES_YAML or restore "
                                "feature_repo/sources.yaml") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), list):
        raise ValueError(f"{path}: expected a mapping with a 'sources' list (see feature_repo/sources.yaml)")
    default_days = float(raw.get("window_days", DEFAULT_WINDOW_DAYS))
    stats = raw.get("statistics")
    try:
        sources = tuple(SourceSpec(name=str(s["name"]), k=int(s["k"]), description=str(s.get("description", "")),
                                   window_days=float(s.get("window_days", default_days)))
                        for s in raw["sources"])
        return FeatureSpec(
            sources=sources,
            tabular_dim=int(raw.get("tabular_dim", 16)),
            encoder_dim=int(raw.get("encoder_dim", 384)),
            feature_service=str(raw.get("feature_service", "user_features_v1")),
            statistics=StatsSpec.from_yaml(stats) if isinstance(stats, dict) else None,
        )
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


# ---- the MovieLens world: which ratings feed which source --------------------------------------------------
# Ratings (inclusive range) that route an event to a source; a source in sources.yaml without a rule here
# cannot be built from MovieLens and is reported as an error rather than silently left empty.
RATING_RULES: dict[str, tuple[int, int]] = {"liked": (4, 5), "neutral": (3, 3), "disliked": (1, 2)}


@dataclass(frozen=True)
class RatedSource:
    """A source of the schema and the rating range (inclusive) that routes MovieLens ratings to it."""

    spec: SourceSpec
    min_rating: int
    max_rating: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def k(self) -> int:  # events kept per user (newest K of the history window)
        return self.spec.k


@dataclass(frozen=True)
class SourcesConfig:
    """The feature schema paired with each source's rating range: training's view of sources.yaml."""

    spec: FeatureSpec
    sources: tuple[RatedSource, ...]

    @property
    def names(self) -> list[str]:
        return self.spec.names

    @property
    def encoder_dim(self) -> int:  # all-MiniLM-L6-v2 width
        return self.spec.encoder_dim

    @property
    def tabular_dim(self) -> int:  # width of the standardised statistics vector
        return self.spec.tabular_dim

    def source_of_rating(self, rating: int) -> str | None:
        for s in self.sources:
            if s.min_rating <= rating <= s.max_rating:
                return s.name
        return None


def load_sources(path: Path | None = None, rating_rules: dict[str, tuple[int, int]] | None = None) -> SourcesConfig:
    """sources.yaml (the one parser above) paired with the MovieLens rating rules."""
    spec = load_feature_spec(path)
    rules = rating_rules or RATING_RULES
    unknown = [n for n in spec.names if n not in rules]
    if unknown:
        raise ValueError(f"sources {unknown} in {path or default_sources_path()} have no MovieLens rating rule; add "
                         f"them to training.data.sources.RATING_RULES (known: {sorted(rules)}) or pass "
                         "rating_rules=")
    return SourcesConfig(spec, tuple(RatedSource(s, *rules[s.name]) for s in spec.sources))
