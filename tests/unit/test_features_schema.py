"""sources.yaml is parsed in one place (training.data.sources) and every reader of the schema shares its classes."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.common import features
from services.ingest.transform import load_ingest_spec
from training.data import sources


def test_one_schema_class_for_services_and_training() -> None:
    assert features.FeatureSpec is sources.FeatureSpec and features.SourceSpec is sources.SourceSpec
    spec = sources.load_feature_spec()
    assert load_ingest_spec().features == spec
    assert sources.load_sources().spec == spec


def test_windows_come_from_the_same_parse(tmp_path: Path) -> None:
    p = tmp_path / "sources.yaml"
    p.write_text("tabular_dim: 2\nwindow_days: 30\nsources:\n  - {name: liked, k: 4}\n"
                 "  - {name: disliked, k: 2, window_days: 7}\n")
    spec = sources.load_feature_spec(p)
    assert [s.window_days for s in spec.sources] == [30.0, 7.0]
    assert load_ingest_spec(p).window_s == {"liked": 30 * 86400.0, "disliked": 7 * 86400.0}
    assert [(s.name, s.k, s.min_rating, s.max_rating) for s in sources.load_sources(p).sources] == [
        ("liked", 4, 4, 5), ("disliked", 2, 1, 2)]


def test_training_refuses_a_source_without_a_rating_rule(tmp_path: Path) -> None:
    p = tmp_path / "sources.yaml"
    p.write_text("sources:\n  - {name: searched, k: 4}\n")
    with pytest.raises(ValueError, match="RATING_RULES"):
        sources.load_sources(p)
