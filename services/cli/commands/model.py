"""`qanchor model register|publish|promote|retire|list|get`: model versions in and out of serving, no restart
(docs/models.md).

    python -m training.export --preset tiny --out /tmp/exports --model-version tiny-v2      # (model env)
    qanchor model register /tmp/exports/qanchor/1/models/tiny-v2 --metrics metrics.json
    qanchor model publish tiny-v2          # copies it into the model repository Triton serves, sha256-checked
    qanchor model promote tiny-v2          # the gateway's default model version
    qanchor model retire tiny-v1           # out of serving: the registry stops offering it, its folder goes
    qanchor model list --json

`publish` needs the model repository on this machine (default: the local stack's, $QANCHOR_STATE_DIR/
model_repository; --repository for another mount). The running Triton loads the version on the first request that
names it; A/B arms may route to it (`model_version:` in the A/B file) once it is published.
"""
from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path

from services.cli.commands._registry import add_connection_args, enum_name, registry_client
from services.cli.output import CliError, as_dict, format_table, print_json
from services.common.proto.qanchor.v1 import registry_pb2 as pb
from training.export.publish import PublishError, inspect_artifact, publish_artifact, unpublish


def _state(m: pb.ModelVersion) -> str:
    return enum_name(m.state, pb.ModelState, "MODEL_STATE_")


def _show(m: pb.ModelVersion, args: argparse.Namespace, verb: str) -> None:
    if args.json:
        print_json(as_dict(m))
    else:
        print(f"{verb} model version {m.model_version!r} ({_state(m)}, sha256 {m.sha256[:12]})")


def _metrics(path: Path | None) -> dict[str, float]:
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text())
        return {str(k): float(v) for k, v in raw.items() if isinstance(v, (int, float))}
    except (OSError, ValueError, AttributeError) as exc:
        raise CliError(f"cannot read metrics from {path} ({exc}); pass a JSON object of name: number") from None


def _register(args: argparse.Namespace) -> int:
    folder = Path(args.artifact_dir).expanduser().resolve()
    try:
        info = inspect_artifact(folder)
    except PublishError as exc:
        raise CliError(str(exc)) from None
    version = args.version or info.model_version
    if version != info.model_version:
        raise CliError(f"{folder} was exported as model version {info.model_version!r}; register it under that "
                       f"name, or export again with --model-version {version}")
    with registry_client(args) as c:
        m = c.register_model(version, str(folder), info.manifest_sha256, _metrics(args.metrics), info.source_id,
                             created_by=getpass.getuser())
    _show(m, args, "registered")
    if not args.json:
        print(f"publish it with: qanchor model publish {version}")
    return 0


def _repository(args: argparse.Namespace) -> Path:
    if args.repository:
        return Path(args.repository).expanduser().resolve()
    from services.cli.target import CliSettings
    from services.stack.settings import StateLayout

    return StateLayout(Path(CliSettings().state_dir)).model_repository.resolve()


def _publish(args: argparse.Namespace) -> int:
    repo = _repository(args)
    with registry_client(args) as c:
        m = c.get_model(args.version)
        try:
            target = publish_artifact(Path(m.artifact_uri), repo, m.model_version, m.sha256)
        except PublishError as exc:
            raise CliError(str(exc)) from None
        m = c.publish_model(m.model_version, str(repo))
    _show(m, args, "published")
    if not args.json:
        print(f"in {target}; Triton serves it on the first request naming it. Route an A/B arm to it "
              f"(model_version: {m.model_version}) or promote it: qanchor model promote {m.model_version}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    with registry_client(args) as c:
        m = c.promote_model(args.version)
    _show(m, args, "promoted")
    if not args.json:
        print("the gateway serves it to arms without a model_version within its refresh interval "
              "(GATEWAY_MODELS_REFRESH_S)")
    return 0


def _retire(args: argparse.Namespace) -> int:
    from training.export.versions import VersionError, valid_version

    try:
        valid_version(args.version)
    except VersionError as exc:
        raise CliError(str(exc)) from None
    with registry_client(args) as c:
        m = c.retire_model(args.version)  # first: the gateway stops routing to it before its files go
    _show(m, args, "retired")
    if args.keep_files:
        return 0
    try:
        folder = unpublish(_repository(args), m.model_version)
    except PublishError as exc:
        raise CliError(str(exc)) from None
    if not args.json:
        print("nothing to remove from the model repository" if folder is None else
              f"removed {folder}; model servers that loaded it drop it when they unload versions (a request naming "
              "it now gets NOT_FOUND)")
    return 0


def _get(args: argparse.Namespace) -> int:
    with registry_client(args) as c:
        m = c.get_model(args.version)
    if args.json:
        print_json(as_dict(m))
    else:
        print(format_table([_row(m)], _HEADER))
    return 0


_HEADER = ["model_version", "state", "sha256", "metrics", "artifact"]


def _row(m: pb.ModelVersion) -> list[object]:
    return [m.model_version, _state(m), m.sha256[:12],
            " ".join(f"{k}={v:.4f}" for k, v in sorted(m.metrics.items())) or "-", m.artifact_uri]


def _list(args: argparse.Namespace) -> int:
    with registry_client(args) as c:
        models = c.list_models()
    if args.json:
        print_json([as_dict(m) for m in models])
    else:
        print(format_table([_row(m) for m in models], _HEADER))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("model", help="register, publish and promote model versions (no restart)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    r = sub.add_parser("register", help="record an exported model version folder in the registry (admin)")
    r.add_argument("artifact_dir", metavar="ARTIFACT_DIR", help="an exported version: REPO/qanchor/1/models/V")
    r.add_argument("--version", help="the model version (default: the one in its manifest; must match it)")
    r.add_argument("--metrics", type=Path, help="JSON object of held-out metrics (name: number)")
    r.set_defaults(func=_register)

    pub = sub.add_parser("publish", help="copy a registered version into the served model repository (admin)")
    pub.add_argument("version")
    pub.set_defaults(func=_publish)

    pr = sub.add_parser("promote", help="make a published version the default model version (admin)")
    pr.add_argument("version")
    pr.set_defaults(func=_promote)

    rt = sub.add_parser("retire", help="take a version out of serving and remove its published folder (admin)")
    rt.add_argument("version")
    rt.add_argument("--keep-files", action="store_true", help="only mark it retired in the registry")
    rt.set_defaults(func=_retire)

    g = sub.add_parser("get", help="show one model version")
    g.add_argument("version")
    g.set_defaults(func=_get)

    ls = sub.add_parser("list", help="list model versions, newest first")
    ls.set_defaults(func=_list)

    for action in (pub, rt):
        action.add_argument("--repository", help="the Triton model repository (default: the local stack's, "
                                                 "$QANCHOR_STATE_DIR/model_repository)")
    for action in (r, pub, pr, rt, g, ls):
        add_connection_args(action)
