"""`qanchor train submit|wait|status|logs|cancel|list`: pretraining runs as Kubernetes Jobs (docs/jobs.md).

    qanchor train submit RUN_ID [--nodes N] [--gpus-per-node G] [--wait] -- --config smollm2 --dataset ml-1m ...
    qanchor train wait RUN_ID          progress bar until the Job ends; prints the result (checkpoint, sha256)
    qanchor train status RUN_ID        the Job's state as JSON
    qanchor train logs RUN_ID [--index I] [--no-follow]
    qanchor train cancel RUN_ID        delete the Job and its pods
    qanchor train list

One GPU: a plain Job running `python -m training.pretrain`. Several GPUs on one node: `torchrun --standalone`.
Several nodes: an Indexed Job (one pod per node) plus a headless Service; the pods rendezvous with c10d on pod 0.
The run writes runs/RUN_ID/ on the artifacts volume. Where to connect and what the pods get (image, GPU resource,
node selector, tolerations, TTL, artifacts claim) come from QANCHOR_KUBE_* (services/kube/settings.py); the
options below override the most common ones.
"""
from __future__ import annotations

import argparse
import getpass
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from services.cli.output import add_json_flag, print_json
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound

ARGS_HINT = "pass the training arguments after --, e.g. qanchor train submit r1 -- --config smollm2 --dataset ml-1m"


def _backend(args: argparse.Namespace) -> Any:
    from services.kube.backend import KubeJobBackend
    from services.kube.settings import KubeJobSettings

    overrides = {k: v for k, v in (("kubeconfig", args.kubeconfig), ("namespace", args.namespace),
                                   ("image", getattr(args, "image", None))) if v}
    return KubeJobBackend(KubeJobSettings(**overrides))


def _status_dict(status: Any) -> dict[str, Any]:
    out = asdict(status)
    out["phase"] = status.phase.value
    out["labels"] = dict(status.labels)
    for key in ("created", "started", "finished"):
        out[key] = out[key].isoformat() if out[key] else None
    return out


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    """One JSON document with --json, else a line of text for people."""
    if getattr(args, "json", False):
        print_json(doc)
    else:
        print(text)


def _name(run_id: str) -> str:
    from services.kube.manifests import ManifestError, pretrain_job_name

    try:
        return pretrain_job_name(run_id)
    except ManifestError as exc:
        raise InvalidArgument(str(exc)) from None


def split_submit_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """Everything after RUN_ID arrives as one list (argparse.REMAINDER): our options up to `--` are parsed into
    `args` here, the rest are the training arguments."""
    rest = list(args.train_args)
    if "--" in rest:
        cut = rest.index("--")
        parser.parse_args(rest[:cut], namespace=args)
        rest = rest[cut + 1:]
    if not rest:
        raise InvalidArgument(ARGS_HINT)
    return rest


def _submit(args: argparse.Namespace) -> int:
    from services.kube.manifests import ManifestError, PretrainSpec, pretrain_job

    train_args = split_submit_args(args, args.submit_options)
    spec = PretrainSpec(run_id=args.run_id, train_args=train_args, nodes=args.nodes,
                        gpus_per_node=args.gpus_per_node, active_deadline_s=args.deadline_s,
                        submitted_by=f"{getpass.getuser()}@{socket.gethostname()}")
    with _backend(args) as backend:
        try:
            job, service = pretrain_job(backend.settings, spec)
        except ManifestError as exc:
            raise InvalidArgument(str(exc)) from None
        status = backend.submit(job, service)
        doc = {"job": status.name, "namespace": backend.namespace, "phase": status.phase.value,
               "indexed": service is not None, "command": job["spec"]["template"]["spec"]["containers"][0]["command"]}
        _emit(args, doc, f"job {status.name} in namespace {backend.namespace}: {status.phase.value}"
                         f"{' (indexed, ' + str(spec.nodes) + ' pods)' if service is not None else ''}; "
                         f"follow it with: qanchor train wait {args.run_id}")
        if args.wait:
            return _wait_on(backend, status.name, args)
    return 0


def _wait_on(backend: Any, name: str, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    last = None
    with tqdm(total=1, file=sys.stderr, bar_format="{desc} |{bar}| {n}/{total} pods done {postfix}") as bar:
        for status in backend.watch(name):
            bar.total = status.completions
            bar.n = status.succeeded
            bar.set_description_str(f"{name} {status.phase.value:<9}")
            bar.set_postfix_str(f"active {status.active}, failed {status.failed}")
            bar.refresh()
            last = status
    assert last is not None
    if last.phase.value != "SUCCEEDED":
        said = backend.failure_messages(name) if last.phase.value == "FAILED" else []
        print(f"{name}: {last.phase.value} {last.message}" + (f"; {said[-1]}" if said else ""), file=sys.stderr)
        return 1
    result = backend.result(name)
    _emit(args, {"job": name, "phase": last.phase.value, "result": result},
          f"{name}: {last.phase.value}\n" + "\n".join(f"{k}: {v}" for k, v in sorted((result or {}).items())))
    return 0


def _wait(args: argparse.Namespace) -> int:
    with _backend(args) as backend:
        return _wait_on(backend, _name(args.run_id), args)


def _status(args: argparse.Namespace) -> int:
    name = _name(args.run_id)
    with _backend(args) as backend:
        status = backend.get(name)
        if status is None:
            raise NotFound(f"no Job {name} in namespace {backend.namespace}; list runs with `qanchor train list`")
        doc = _status_dict(status)
        _emit(args, doc, f"{name}: {doc['phase']}  pods done {status.succeeded}/{status.completions}  "
                         f"active {status.active}  failed {status.failed}"
                         + (f"\n{status.message}" if status.message else ""))
    return 0


def _list(args: argparse.Namespace) -> int:
    from services.kube.manifests import LABEL_COMPONENT, PRETRAIN_COMPONENT

    with _backend(args) as backend:
        runs = backend.list(f"{LABEL_COMPONENT}={PRETRAIN_COMPONENT}")
    if args.json:
        print_json([_status_dict(r) for r in runs])
        return 0
    print(f"{'run':<24}{'phase':<11}{'pods done':<11}created")
    for r in runs:
        created = r.created.strftime("%Y-%m-%d %H:%M") if r.created else "-"
        print(f"{r.label('qanchor.dev/run-id'):<24}{r.phase.value:<11}{f'{r.succeeded}/{r.completions}':<11}{created}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    name = _name(args.run_id)
    with _backend(args) as backend:
        deadline = time.monotonic() + args.wait_s
        while True:
            try:
                for line in backend.stream_logs(name, index=args.index, follow=not args.no_follow):
                    print(line, flush=True)
                return 0
            except FailedPrecondition as exc:  # not scheduled yet: wait for it, up to --wait-s
                if time.monotonic() >= deadline:
                    raise FailedPrecondition(f"{exc.message} (waited {args.wait_s:.0f} s; raise --wait-s)") from None
                time.sleep(2.0)


def _cancel(args: argparse.Namespace) -> int:
    name = _name(args.run_id)
    with _backend(args) as backend:
        deleted = backend.cancel(name)
    _emit(args, {"job": name, "deleted": deleted},
          f"{name}: deleted with its pods" if deleted else f"{name}: nothing to delete")
    if not deleted:
        print(f"{name} did not exist (already finished and deleted by its TTL, or never submitted)", file=sys.stderr)
    return 0


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig (env QANCHOR_KUBE_KUBECONFIG; default: in-cluster, "
                   "$KUBECONFIG, ~/.kube/config, or the local stack's control plane)")
    p.add_argument("--namespace", help="namespace (env QANCHOR_KUBE_NAMESPACE; default: the kubeconfig's)")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="pretraining runs as Kubernetes Jobs (submit, wait, logs, cancel)",
                              description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="train_command", metavar="ACTION", required=True)

    options = argparse.ArgumentParser(add_help=False, prog="qanchor train submit RUN_ID")
    options.add_argument("--nodes", type=int, default=1, help="pods (one per node); > 1 = Indexed Job with "
                         "torchrun c10d")
    options.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per pod (> 1: torchrun, one rank per "
                         "GPU)")
    options.add_argument("--deadline-s", type=int, default=None, help="activeDeadlineSeconds of the Job")
    options.add_argument("--image", help="container image (env QANCHOR_KUBE_IMAGE)")
    options.add_argument("--wait", action="store_true", help="then wait for it as `qanchor train wait` does")
    add_json_flag(options)
    _connection(options)
    s = sub.add_parser("submit", parents=[options], conflict_handler="resolve",
                       help="create the pretraining Job (Indexed Job + headless Service for >1 node)")
    s.add_argument("run_id", help="run id: lowercase letters, digits, '-' (names the Job and runs/RUN_ID)")
    s.add_argument("train_args", nargs=argparse.REMAINDER, metavar="-- TRAIN_ARGS",
                   help="the arguments of training.pretrain, after --")
    s.set_defaults(func=_submit, submit_options=options)

    w = sub.add_parser("wait", help="follow a run until it ends; print its result")
    w.add_argument("run_id")
    w.set_defaults(func=_wait)

    st = sub.add_parser("status", help="a run's Job state (--json: the whole status)")
    st.add_argument("run_id")
    st.set_defaults(func=_status)

    ls = sub.add_parser("list", help="pretraining runs in the namespace, newest first")
    ls.set_defaults(func=_list)

    lg = sub.add_parser("logs", help="stream a run's pod log (needs the pod to run on a node)")
    lg.add_argument("run_id")
    lg.add_argument("--index", type=int, default=0, help="pod index of a multi-node run (default 0)")
    lg.add_argument("--no-follow", action="store_true", help="print what is there and stop")
    lg.add_argument("--wait-s", type=float, default=0.0, help="wait this long for the pod to be scheduled")
    lg.set_defaults(func=_logs)

    c = sub.add_parser("cancel", help="delete the run's Job and its pods")
    c.add_argument("run_id")
    c.set_defaults(func=_cancel)

    for action in (w, st, ls, lg, c):
        _connection(action)
    for action in (w, st, ls, c):  # `logs` streams text; submit takes --json before `--` (its options parser)
        add_json_flag(action)
