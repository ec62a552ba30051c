"""docker/kafka_topics.py (compose one-shot, Helm hook Job) against the real Kafka broker of the test stack."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.stack.kafka import load_topics

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docker" / "kafka_topics.py"

pytestmark = pytest.mark.integration


def _run(bootstrap: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--bootstrap", bootstrap, "--replication", "1",
                           "--wait", "30"], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_creates_missing_topics_as_topics_yaml_says_and_leaves_existing_ones(stack) -> None:
    from kafka.admin import KafkaAdminClient

    dlq = next(s for s in load_topics() if "dlq" in s.name)
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap, client_id="test-deploy-topics")
    try:
        admin.delete_topics([dlq.name], timeout_ms=10000)
        deadline = time.monotonic() + 30
        while dlq.name in admin.list_topics():  # deletion is asynchronous
            assert time.monotonic() < deadline, f"{dlq.name} still listed 30 s after deletion"
            time.sleep(0.5)

        run = _run(stack.kafka_bootstrap)
        assert run.returncode == 0, run.stderr
        assert f"created={dlq.name}" in run.stderr
        (meta,) = admin.describe_topics([dlq.name])
        assert len(meta["partitions"]) == dlq.partitions
        again = _run(stack.kafka_bootstrap)  # idempotent: a second release upgrade creates nothing
        assert again.returncode == 0 and "created=-" in again.stderr, again.stderr
    finally:
        admin.close()
