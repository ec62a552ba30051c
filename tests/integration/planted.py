"""Labelled users with a planted, learnable signal, for tuning tests (shared by the tuning integration tests)."""
from __future__ import annotations

import numpy as np

from services.common.features import SourceEvents, UserFeatures, load_feature_spec


def planted_users(n_users: int, seed: int = 5, prefix: str = "tune-user", max_events: int = 6
                  ) -> tuple[list[UserFeatures], dict[str, int]]:
    """Users whose label is the side of a fixed direction their newest liked event lies on."""
    spec = load_feature_spec()
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(spec.encoder_dim)
    rows, labels = [], {}
    for i in range(n_users):
        sources = {}
        for s in spec.sources:
            n = int(rng.integers(1, max_events))
            vecs = rng.standard_normal((n, spec.encoder_dim)).astype(np.float16)
            sources[s.name] = SourceEvents([f"{s.name} {j}" for j in range(n)], vecs,
                                           np.arange(n, dtype=np.int64) + 1_700_000_000)
        uid = f"{prefix}-{i}"
        labels[uid] = int(sources["liked"].vectors[-1].astype(np.float64) @ direction > 0)
        rows.append(UserFeatures(uid, sources, rng.standard_normal(spec.tabular_dim).astype(np.float32), i + 1,
                                 1_763_000_000.0))
    return rows, labels
