"""Which behaviour sources a user has, how many events each keeps, and how a MovieLens rating maps onto them.

Names and K come from `feature_repo/sources.yaml` (the feature-store schema, shared with ingest and serving)
when it exists; the rating range of each source is a MovieLens-world rule and lives here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES_YAML = REPO_ROOT / "feature_repo" / "sources.yaml"

# Ratings (inclusive range) that route an event to a source; a source in sources.yaml without a rule here
# cannot be built from MovieLens and is reported as an error rather than silently left empty.
RATING_RULES: dict[str, tuple[int, int]] = {"liked": (4, 5), "neutral": (3, 3), "disliked": (1, 2)}


@dataclass(frozen=True)
class SourceSpec:
    name: str
    k: int  # events kept per user (newest K of the history window)
    min_rating: int  # inclusive rating range routed to this source
    max_rating: int


@dataclass(frozen=True)
class SourcesConfig:
    sources: tuple[SourceSpec, ...] = field(default_factory=lambda: (
        SourceSpec("liked", 32, 4, 5), SourceSpec("neutral", 16, 3, 3), SourceSpec("disliked", 16, 1, 2)))
    encoder_dim: int = 384  # all-MiniLM-L6-v2 width
    tabular_dim: int = 16  # width of the standardised statistics vector

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    def source_of_rating(self, rating: int) -> str | None:
        for s in self.sources:
            if s.min_rating <= rating <= s.max_rating:
                return s.name
        return None


def load_sources(path: Path | None = None, rating_rules: dict[str, tuple[int, int]] | None = None) -> SourcesConfig:
    """Read sources.yaml (or fall back to the built-in defaults when the file does not exist)."""
    path = path or SOURCES_YAML
    rules = rating_rules or RATING_RULES
    if not path.exists():
        log.info("sources_default reason=missing path=%s", path)
        return SourcesConfig()
    raw = yaml.safe_load(path.read_text()) or {}
    specs = []
    for entry in raw.get("sources", []):
        name, k = str(entry["name"]), int(entry["k"])
        if name not in rules:
            raise ValueError(
                f"source {name!r} in {path} has no MovieLens rating rule; add it to "
                f"training.data.sources.RATING_RULES (known: {sorted(rules)}) or pass rating_rules=")
        lo, hi = rules[name]
        specs.append(SourceSpec(name, k, lo, hi))
    if not specs:
        raise ValueError(f"{path} lists no sources; see docs/data.md for the expected layout")
    return SourcesConfig(tuple(specs), int(raw.get("encoder_dim", 384)), int(raw.get("tabular_dim", 16)))
