"""The offline event log: validated events -> Parquet segments by day, behind a Feast FileSource (docs/eventlog.md)."""
