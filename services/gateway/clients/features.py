"""Opens the Feast-backed feature reader (services.common.features_online) the gateway reads through."""
from __future__ import annotations

from services.common.features import load_feature_spec
from services.gateway.core import FeatureSource
from services.gateway.settings import GatewaySettings


def open_feature_source(settings: GatewaySettings) -> FeatureSource:
    from services.common.feast_store import get_store  # Feast is heavy: import only when serving
    from services.common.features_online import FeatureReader

    reader = FeatureReader(get_store(settings.feast_location or settings.state_dir), load_feature_spec(),
                           serving=True)  # what the model reads, not ingest's bookkeeping
    # The first read loads Feast's registry and feature service (~2 s on a busy 2-core machine): pay it here,
    # before the server reports SERVING, not inside the first caller's deadline.
    reader.get(["__qanchor_gateway_warmup__"])
    return reader
