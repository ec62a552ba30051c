"""How every artifact reaches the disk: atomic files and directories, and sha256 manifests checked on read.

Shared by training checkpoints and soft prompts (`training.artifacts`), serving model artifacts
(`training.export.artifact`) and the Triton model repository writers (`training.export`). Standard library only,
so it imports in either environment without torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

MANIFEST = "manifest.json"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temp sibling and rename: a reader (Triton polling its repository) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_dir_atomic(target: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temp sibling of `target`, which then replaces `target`: never a half-written artifact."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def write_manifest(d: Path, body: dict[str, Any], files: list[str] | None = None) -> dict[str, Any]:
    """`d/manifest.json`: `body` plus the sha256 of `files` (default: every file under `d`) and the time."""
    d = Path(d)
    names = files if files is not None else [str(p.relative_to(d)) for p in sorted(d.rglob("*"))
                                             if p.is_file() and p.name != MANIFEST]
    manifest = {**body, "files": {f: file_sha256(d / f) for f in names}, "created_at": time.time()}
    (d / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def verify_manifest(d: Path, fmt: str, error: type[Exception], *, not_found: str, fix: str) -> dict[str, Any]:
    """Check the manifest's format and every listed sha256; -> manifest. Raises `error` naming the bad file;
    `not_found` follows the missing-manifest message, `fix` the missing/corrupt-file ones."""
    d = Path(d)
    path = d / MANIFEST
    if not path.is_file():
        raise error(f"{path} not found: {not_found}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != fmt:
        raise error(f"{path}: format {manifest.get('format')!r}, expected {fmt!r}")
    for name, sha in manifest["files"].items():
        f = d / name
        if not f.is_file():
            raise error(f"{f} is listed in the manifest but missing; {fix}")
        if file_sha256(f) != sha:
            raise error(f"{f} sha256 mismatch (corrupt or edited); {fix}")
    return manifest


def default_model_repository() -> Path:
    """The local stack's Triton model repository: `$QANCHOR_STATE_DIR/model_repository` (default `./var`)."""
    state = os.environ.get("QANCHOR_STATE_DIR") or str(Path(__file__).resolve().parents[1] / "var")
    return Path(state) / "model_repository"
