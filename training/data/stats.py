"""The per-user statistics of the dense user vector (`tabular`), from raw events: one implementation for training
and ingest.

    spec = load_feature_spec().statistics                        # the `statistics:` section of sources.yaml
    agg = StatsAggregate.of_events(spec, ts, attrs, vectors)      # sufficient aggregates of some events
    agg = stored.merge(agg, spec)                                 # incremental: merge(A, B) == of_events(A + B)
    dense = norm.dense(agg)                                       # [n_stats + encoder_dim] float32, standardised

Which event attributes feed which statistic is declared in sources.yaml (a rating with liked/disliked thresholds, a
year, a categorical list with its share columns), so nothing here knows MovieLens. The aggregates are sums, counts,
the set of active days and the timestamps of the last `recent_days`: every statistic is a pure function of them,
and merging two aggregates equals aggregating the union, which is what lets ingest keep them in the user's row and
update them per batch. The normalisation constants (train-user mean/std per dimension) travel with the model
(`Normalisation`, a JSON file in the checkpoint), never with producers.

numpy + the standard library only: both environments import it (services through services.common.features).
"""
from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

DAY = 86400
NORMALISATION_FORMAT = "qanchor-normalisation/1"


@dataclass(frozen=True)
class StatsSpec:
    """The `statistics:` section of sources.yaml: which event attributes the statistics read."""

    # Numeric attribute with the user's rating of the item; events without it are left out of the rating stats.
    rating: str = "rating"
    # A rating >= liked_min counts as liked, <= disliked_max as disliked.
    liked_min: float = 4.0
    disliked_max: float = 2.0
    # Numeric attribute averaged over the events where it is > 0 (0 or absent = unknown).
    year: str = "year"
    # String attribute holding a list of categories joined by `separator`; entropy over all, shares of `shares`.
    categories: str = "genres"
    separator: str = "|"
    shares: tuple[str, ...] = ()
    # Share of the events within this many days of the user's newest one.
    recent_days: float = 7.0
    # File name of the normalisation constants in a model checkpoint / serving artifact.
    constants_file: str = "normalisation.json"

    @property
    def names(self) -> tuple[str, ...]:
        """The statistics in vector order."""
        return ("log_n_events", f"mean_{self.rating}", f"{self.rating}_std", "share_liked", "share_disliked",
                "log_span_days", "log_active_days", f"share_last_{self.recent_days:g}d", "weekend_share",
                f"mean_{self.year}", f"{self.categories}_entropy") + tuple(f"share_{c.lower()}" for c in self.shares)

    @classmethod
    def from_yaml(cls, raw: Mapping[str, Any]) -> "StatsSpec":
        """Parse the section (called by `load_feature_spec` only); ValueError says which key is wrong."""
        rating, year, cats = raw.get("rating") or {}, raw.get("year") or {}, raw.get("categories") or {}
        if not all(isinstance(x, dict) for x in (rating, year, cats)):
            raise ValueError("statistics.rating / .year / .categories must be mappings (see feature_repo/sources.yaml)")
        spec = cls(rating=str(rating.get("attribute", cls.rating)),
                   liked_min=float(rating.get("liked_min", cls.liked_min)),
                   disliked_max=float(rating.get("disliked_max", cls.disliked_max)),
                   year=str(year.get("attribute", cls.year)),
                   categories=str(cats.get("attribute", cls.categories)),
                   separator=str(cats.get("separator", cls.separator)),
                   shares=tuple(str(c) for c in cats.get("shares", ())),
                   recent_days=float(raw.get("recent_days", cls.recent_days)),
                   constants_file=str(raw.get("constants_file", cls.constants_file)))
        if spec.recent_days <= 0 or not spec.separator:
            raise ValueError("statistics.recent_days must be > 0 and categories.separator non-empty")
        return spec

    def event_values(self, attributes: Mapping[str, Any]) -> tuple[float, float, tuple[str, ...]]:
        """(rating or nan, year or 0, categories) of one event's attributes; anything unusable counts as absent."""
        r, y, c = attributes.get(self.rating), attributes.get(self.year), attributes.get(self.categories)
        rating = float(r) if isinstance(r, (int, float)) and not isinstance(r, bool) else math.nan
        year = float(y) if isinstance(y, (int, float)) and not isinstance(y, bool) and y > 0 else 0.0
        cats = tuple(x for x in c.split(self.separator) if x) if isinstance(c, str) else ()
        return rating, year, cats


@dataclass
class StatsAggregate:
    """Sufficient aggregates of a user's events: every statistic (and the mean event vector) derives from them."""

    n: int = 0
    ts_min: float = math.inf
    ts_max: float = -math.inf
    weekend: int = 0
    # Sorted distinct active days (unix seconds // DAY) and the sorted timestamps within recent_days of ts_max.
    days: list[int] = field(default_factory=list)
    recent: list[float] = field(default_factory=list)
    r_n: int = 0
    r_sum: float = 0.0
    r_sumsq: float = 0.0
    liked: int = 0
    disliked: int = 0
    y_n: int = 0
    y_sum: float = 0.0
    cats: dict[str, int] = field(default_factory=dict)
    # Events with a text vector and the float64 sum of those vectors (exact for float16 vectors).
    v_n: int = 0
    v_sum: np.ndarray | None = None

    @classmethod
    def of_events(cls, spec: StatsSpec, ts: Sequence[float], ratings: Sequence[float], years: Sequence[float],
                  categories: Sequence[Sequence[str]], vectors: np.ndarray | None = None) -> "StatsAggregate":
        """Aggregates of a batch of events (ratings nan when absent, years <= 0 when unknown, [n, d] vectors)."""
        t = np.asarray(ts, np.float64)
        if len(t) == 0:
            return cls()
        r = np.asarray(ratings, np.float64)
        y = np.asarray(years, np.float64)
        day = np.floor(t / DAY).astype(np.int64)
        rated = r[~np.isnan(r)]
        cats: dict[str, int] = {}
        for cs in categories:
            for c in cs:
                cats[c] = cats.get(c, 0) + 1
        ts_max = float(t.max())
        agg = cls(n=len(t), ts_min=float(t.min()), ts_max=ts_max,
                  weekend=int(((day + 3) % 7 >= 5).sum()),  # 1970-01-01 was a Thursday: +3 makes Monday 0
                  days=[int(d) for d in np.unique(day)],
                  recent=sorted(float(x) for x in t[t >= ts_max - spec.recent_days * DAY]),
                  r_n=len(rated), r_sum=float(rated.sum()), r_sumsq=float((rated * rated).sum()),
                  liked=int((rated >= spec.liked_min).sum()), disliked=int((rated <= spec.disliked_max).sum()),
                  y_n=int((y > 0).sum()), y_sum=float(y[y > 0].sum()), cats=cats)
        if vectors is not None and len(vectors):
            agg.v_n, agg.v_sum = len(vectors), np.asarray(vectors, np.float64).sum(0)
        return agg

    def merge(self, other: "StatsAggregate", spec: StatsSpec) -> "StatsAggregate":
        """The aggregates of both event sets (neither is changed)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        ts_max = max(self.ts_max, other.ts_max)
        horizon = ts_max - spec.recent_days * DAY
        if self.v_sum is None or other.v_sum is None:
            v_sum = self.v_sum if other.v_sum is None else other.v_sum
        else:
            v_sum = self.v_sum + other.v_sum
        cats = dict(self.cats)
        for c, k in other.cats.items():
            cats[c] = cats.get(c, 0) + k
        return StatsAggregate(
            n=self.n + other.n, ts_min=min(self.ts_min, other.ts_min), ts_max=ts_max,
            weekend=self.weekend + other.weekend, days=sorted(set(self.days) | set(other.days)),
            recent=sorted(x for x in self.recent + other.recent if x >= horizon),
            r_n=self.r_n + other.r_n, r_sum=self.r_sum + other.r_sum, r_sumsq=self.r_sumsq + other.r_sumsq,
            liked=self.liked + other.liked, disliked=self.disliked + other.disliked,
            y_n=self.y_n + other.y_n, y_sum=self.y_sum + other.y_sum, cats=cats,
            v_n=self.v_n + other.v_n, v_sum=v_sum)

    def raw_stats(self, spec: StatsSpec) -> np.ndarray:
        """[len(spec.names)] float64 unstandardised statistics (call only when n > 0)."""
        n, rn = self.n, max(self.r_n, 1)
        mean_r = self.r_sum / rn
        counts = np.array(list(self.cats.values()), np.float64)
        p = counts[counts > 0] / max(counts.sum(), 1e-9)
        return np.array([
            math.log1p(n),
            mean_r,
            math.sqrt(max(self.r_sumsq / rn - mean_r * mean_r, 0.0)),
            self.liked / rn,
            self.disliked / rn,
            math.log1p((self.ts_max - self.ts_min) / DAY),
            math.log1p(len(self.days)),
            len(self.recent) / n,  # recency: how much of the history is in its last days
            self.weekend / n,
            self.y_sum / self.y_n if self.y_n else 0.0,
            float(-(p * np.log(p)).sum()),
        ] + [self.cats.get(c, 0) / n for c in spec.shares], np.float64)

    def mean_vector(self) -> np.ndarray | None:
        return None if self.v_sum is None or self.v_n == 0 else self.v_sum / self.v_n

    # ---- storage: one bytes value in the user's row --------------------------------------------------------
    def to_bytes(self) -> bytes:
        if self.n == 0:
            return b""
        body = {k: getattr(self, k) for k in ("n", "ts_min", "ts_max", "weekend", "days", "recent", "r_n", "r_sum",
                                              "r_sumsq", "liked", "disliked", "y_n", "y_sum", "cats", "v_n")}
        if self.v_sum is not None:
            body["v_sum"] = base64.b64encode(np.ascontiguousarray(self.v_sum, "<f8").tobytes()).decode()
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes | None) -> "StatsAggregate":
        if not data:
            return cls()
        body = json.loads(data)
        v = body.pop("v_sum", None)
        agg = cls(**body)
        if v is not None:
            agg.v_sum = np.frombuffer(base64.b64decode(v), "<f8").astype(np.float64)
        return agg


def fit_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std of [n, d] rows; a constant column gets std 1 (it standardises to 0)."""
    mu, sd = x.mean(0), x.std(0)
    sd[sd < 1e-9] = 1.0
    return mu, sd


@dataclass
class Normalisation:
    """Train-user moments of the raw statistics and of the history mean vector: the model's input scaling."""

    names: tuple[str, ...]
    stats_mean: np.ndarray
    stats_std: np.ndarray
    text_mean: np.ndarray
    text_std: np.ndarray

    @classmethod
    def fit(cls, names: Sequence[str], raw_stats: np.ndarray, mean_vectors: np.ndarray) -> "Normalisation":
        """From the train users' [n, n_stats] raw statistics and [n, encoder_dim] history mean vectors."""
        (sm, ss), (tm, ts) = fit_moments(raw_stats), fit_moments(mean_vectors)
        return cls(tuple(names), sm, ss, tm, ts)

    def stats(self, raw: np.ndarray) -> np.ndarray:
        return ((raw - self.stats_mean) / self.stats_std).astype(np.float32)

    def text(self, mean_vectors: np.ndarray) -> np.ndarray:
        return ((mean_vectors - self.text_mean) / self.text_std).astype(np.float32)

    def dense(self, agg: StatsAggregate, spec: StatsSpec) -> np.ndarray | None:
        """[n_stats + encoder_dim] float32 dense user vector, or None without events (cold start)."""
        mean = agg.mean_vector()
        if agg.n == 0 or mean is None:
            return None
        return np.concatenate([self.stats(agg.raw_stats(spec)), self.text(mean)])

    def check(self, spec: StatsSpec, encoder_dim: int, where: str) -> None:
        if self.names != spec.names or len(self.text_mean) != encoder_dim:
            raise ValueError(f"{where}: constants are for statistics {list(self.names)} and a "
                             f"{len(self.text_mean)}-d mean vector, sources.yaml declares {list(spec.names)} and "
                             f"encoder_dim={encoder_dim}; write them again for this model (python -m "
                             "training.normalisation --checkpoint DIR)")

    def to_json(self) -> str:
        return json.dumps({"format": NORMALISATION_FORMAT, "statistics": list(self.names),
                           "stats_mean": self.stats_mean.tolist(), "stats_std": self.stats_std.tolist(),
                           "text_mean": self.text_mean.tolist(), "text_std": self.text_std.tolist()}, indent=1)

    @classmethod
    def load(cls, path: Path | str) -> "Normalisation":
        body = json.loads(Path(path).read_text())
        if body.get("format") != NORMALISATION_FORMAT:
            raise ValueError(f"{path}: format {body.get('format')!r}, expected {NORMALISATION_FORMAT!r}")
        arr = {k: np.asarray(body[k], np.float64) for k in ("stats_mean", "stats_std", "text_mean", "text_std")}
        return cls(tuple(body["statistics"]), **arr)
