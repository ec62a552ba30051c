"""The gRPC gateway: EmbeddingService over A/B routing, Feast online features and the Triton `qanchor` model."""
