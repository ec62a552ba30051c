"""The model's input contract: a batch of users as per-source event vectors plus a tabular vector.

Built by `training.data` (offline) and by the Triton model (online, from Feast features). Event vectors come from
the frozen sentence encoder (all-MiniLM-L6-v2, 384-d), computed once at ingest time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class UserBatch:
    # source name -> [B, K_s, d_enc] float32 event vectors, oldest first, left-aligned; padded rows are zeros.
    event_vecs: dict[str, torch.Tensor]
    # source name -> [B, K_s] bool, True where an event is present (False rows are padding / missing source).
    event_mask: dict[str, torch.Tensor]
    # [B, d_tab] float32 tabular statistics (standardised); zeros for a cold-start user.
    tabular: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.tabular.shape[0]

    def to(self, device: torch.device | str) -> "UserBatch":
        return UserBatch(
            event_vecs={k: v.to(device) for k, v in self.event_vecs.items()},
            event_mask={k: v.to(device) for k, v in self.event_mask.items()},
            tabular=self.tabular.to(device),
        )

    def __getitem__(self, rows: slice) -> "UserBatch":
        """Rows `rows` of every tensor (GradCache chunks, data-parallel shards, evaluation chunks)."""
        return UserBatch({k: v[rows] for k, v in self.event_vecs.items()},
                         {k: v[rows] for k, v in self.event_mask.items()}, self.tabular[rows])
