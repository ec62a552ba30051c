"""Streaming ingest: Kafka events -> validated, windowed, encoded per-user features in Feast (docs/ingest.md)."""
