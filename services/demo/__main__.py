"""`python -m services.demo` (what `scripts/run.sh` runs): the whole online path, end to end, on the local stack.

1. `qanchor stack up`: Kafka, Redis, Triton, Feast, the served models, the registry, ingest and the gateway;
2. replays a few hundred MovieLens-1M users' ratings through Kafka and waits until ingest has written their
   features to Feast;
3. registers scenarios by their query text through the registry's gRPC API (existing ones are reused);
4. fetches embeddings through the gateway's gRPC API;
5. tunes one scenario's soft prompt on the replayed users' labels (a Celery job on the stack's tuning worker),
   splits that scenario 50/50 between zero-shot and the tuned version in the stack's A/B file, and shows what
   each arm serves next to the tuned version's held-out AUC and zero-shot's; then prints a compact report.

The stack is left running: `qanchor stack down` stops it. Settings: QANCHOR_STATE_DIR, QANCHOR_PORT_BASE, DEMO_*.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from services.common.logging import setup_logging
from services.demo import steps
from services.demo.report import DemoReport, TunedArm, TuningResult, counter_change, render
from services.demo.settings import DemoSettings

log = logging.getLogger(__name__)


def progress(msg: str) -> None:
    # Progress goes to stderr so stdout is the report alone.
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def run(settings: DemoSettings, json_out: Path | None = None) -> int:
    from services.gateway.embedding_client import EmbeddingClient
    from services.registry.client import RegistryClient
    from services.stack import Stack, StackError, StackSettings
    from services.stack.apps import read_tokens
    from services.stack.settings import ALL_COMPONENTS

    t_start = time.monotonic()
    stack_settings = StackSettings(state_dir=settings.state_dir, port_base=settings.port_base)
    stack = Stack(stack_settings)
    report = DemoReport()
    if not settings.skip_stack_up:
        progress("stack: starting Kafka, Redis, Triton, Feast, models, registry, ingest, gateway, tuning worker "
                 "(first run: the model export takes a few minutes)")
        try:
            for r in stack.up(list(ALL_COMPONENTS)):
                progress(f"stack: {r.component:<9} {r.outcome} ({r.seconds:.1f} s)")
        except StackError as exc:
            print(exc.render(), file=sys.stderr)
            print("demo: the stack did not start; fix the above, then run the demo again "
                  "(`qanchor stack status` shows what is up)", file=sys.stderr)
            return 1
    record = stack.models.load_record()
    if record is None:
        print("demo: no exported model recorded; run `qanchor stack up models` first", file=sys.stderr)
        return 1
    report.model_version, report.model_trained, report.model_source = (record.model_version, record.trained,
                                                                       record.source)
    ep = stack.endpoints()
    tokens = read_tokens(stack_settings)
    host = stack_settings.host

    t0 = time.monotonic()
    events = steps.export_events(stack_settings.model_python, stack_settings.layout.root / "demo", settings.users,
                                 progress)
    progress(f"kafka: replaying {events.name} into qanchor.events.v1")
    ingest_metrics = f"http://{host}:{stack_settings.port('ingest_metrics')}/metrics"
    counted_before = steps.ingest_counters(ingest_metrics)
    report.events_sent, users = steps.replay(events, ep.kafka_bootstrap)
    report.users_replayed = len(users)
    report.users_with_features = steps.wait_for_features(
        stack_settings.layout.root / "feast" / "feature_store.yaml", users, ep.kafka_bootstrap,
        settings.ingest_timeout_s, progress)
    counted_after = steps.ingest_counters(ingest_metrics)  # ingest counts a batch before committing it
    if counted_before is not None and counted_after is not None:
        report.ingest_outcomes = counter_change(counted_before, counted_after)
    report.replay_s = time.monotonic() - t0

    wanted = steps.load_scenarios(settings.scenarios_file, settings.scenarios)
    with RegistryClient(f"{host}:{stack_settings.port('registry_grpc')}", token=tokens.admin) as registry:
        report.scenarios, report.scenarios_registered, report.scenarios_reused = steps.register_scenarios(
            registry, wanted)

    with EmbeddingClient(f"{host}:{stack_settings.port('gateway_grpc')}", token=tokens.client,
                         timeout_s=settings.rpc_timeout_s) as client:
        steps.fetch_embeddings(client, report, users, list(report.scenarios), progress)

    if settings.tune_scenario:
        report.tuning = tune_and_split(settings, stack_settings, tokens, users, progress)

    report.endpoints = {s.component: s.address for s in stack.status(list(ALL_COMPONENTS))}
    report.wall_s = time.monotonic() - t_start
    print(render(report))
    print(f"\ndemo took {report.wall_s:.0f} s. The stack keeps running (state: {stack_settings.layout.root}).\n"
          f"  try:  .venv/bin/qanchor embed {users[0]} --scenario {next(iter(report.scenarios))}   "
          f"(the CLI finds this stack's address and token in {stack_settings.layout.run})\n"
          f"  stop: .venv/bin/qanchor stack down")
    if json_out:
        json_out.write_text(json.dumps(report.to_json(), indent=1))
    return 0


def tune_and_split(settings: DemoSettings, stack_settings: Any, tokens: Any, users: list[str],
                   progress_: Any) -> TuningResult:
    """Register -> tune on labelled users -> A/B arm on the tuned version -> both arms' responses."""
    from services.gateway.embedding_client import EmbeddingClient
    from services.registry.client import RegistryClient

    scenario, host = settings.tune_scenario, stack_settings.host
    queries = steps.load_scenarios(settings.scenarios_file, 1000)
    if scenario not in queries:
        raise RuntimeError(f"DEMO_TUNE_SCENARIO={scenario!r} is not in {settings.scenarios_file}; choose one of "
                           f"{sorted(queries)}")
    n = min(settings.tune_users, settings.users)
    labels = steps.export_labels(stack_settings.model_python, stack_settings.layout.root / "demo" /
                                 f"labels-{scenario}-{n}.csv", scenario, n, progress_)
    t0 = time.monotonic()
    with RegistryClient(f"{host}:{stack_settings.port('registry_grpc')}", token=tokens.admin) as registry:
        steps.register_scenarios(registry, {scenario: queries[scenario]})
        job = steps.tune(registry, scenario, labels, settings.tune_steps, settings.tune_timeout_s, progress_)
    result = TuningResult(scenario, queries[scenario], job.job_id, settings.tune_steps, time.monotonic() - t0,
                          job.prompt_version, {k: float(v) for k, v in job.metrics.items()})
    ab = stack_settings.resolved_ab_config()
    steps.write_ab_split(ab, scenario, job.prompt_version)
    progress_(f"A/B: {ab}: {scenario} split 50/50 between zero-shot and prompt version {job.prompt_version}")
    with EmbeddingClient(f"{host}:{stack_settings.port('gateway_grpc')}", token=tokens.client,
                         timeout_s=settings.rpc_timeout_s) as client:
        by_arm = steps.arm_responses(client, users[:12], scenario, {"zero-shot", "tuned"}, 120.0, progress_)
    result.arms = [TunedArm(arm, len(rows), rows[0].prompt_version, rows[0].model_version, rows[0].user_id,
                            rows[0].head) for arm, rows in sorted(by_arm.items())]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m services.demo", description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, help="MovieLens-1M users to replay (DEMO_USERS, default 200)")
    p.add_argument("--scenarios", type=int, help="scenarios to register and query (DEMO_SCENARIOS, default 10)")
    p.add_argument("--skip-stack-up", action="store_true", help="use the running stack as is")
    p.add_argument("--tune-steps", type=int, help="steps of the demo's tuning job (DEMO_TUNE_STEPS, default 20)")
    p.add_argument("--no-tune", action="store_true", help="skip tuning and the A/B split (DEMO_TUNE_SCENARIO='')")
    p.add_argument("--json", type=Path, help="also write the report's facts as JSON here")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in {"users": args.users, "scenarios": args.scenarios,
                                   "skip_stack_up": args.skip_stack_up or None, "tune_steps": args.tune_steps,
                                   "tune_scenario": "" if args.no_tune else None}.items() if v is not None}
    settings = DemoSettings(**overrides)
    setup_logging("demo", "WARNING")  # the demo speaks through its progress lines and the report
    try:
        return run(settings, args.json)
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
