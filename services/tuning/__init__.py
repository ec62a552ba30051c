"""Celery soft-prompt tuning worker: registry job -> tuned prompt artifact -> READY prompt version (docs/tuning.md)."""
