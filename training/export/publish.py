"""Publish a registered model artifact into a running Triton's model repository, atomically.

    info = inspect_artifact(Path("runs/export/qanchor/1/models/tiny-v2"))   # verifies every sha256
    publish_artifact(info.path, repository, "tiny-v2", info.manifest_sha256) # -> <repository>/qanchor/1/models/tiny-v2

The copy goes to a dot-folder beside the target, is verified there (every file's sha256 against the manifest, the
manifest's own sha256 against the registered one), then renamed into place: the Triton backend, which loads a new
version folder on the first request naming it (training.export.versions), never sees half an artifact. A version
already published with the same manifest is left alone (idempotent); with another manifest it is refused: a
published version is immutable, publish the new weights under a new version.

Standard library only: the CLI runs it in the services environment.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from training.artifact_io import MANIFEST, verify_manifest
from training.export.versions import SERVING_FORMAT, valid_version

log = logging.getLogger(__name__)

MODEL_NAME = "qanchor"
TRITON_VERSION = "1"
# Written into a version folder by `publish_artifact`: the folder belongs to the registry (a registered, published
# version that A/B arms may name), not to whoever exports the default model; `training.export --only` keeps it.
PUBLISHED_MARKER = "PUBLISHED"


class PublishError(RuntimeError):
    """The artifact cannot be published; the message says what to do."""


@dataclass(frozen=True)
class ArtifactInfo:
    path: Path
    model_version: str  # as written in the manifest
    manifest_sha256: str  # sha256 of manifest.json, which lists the sha256 of every other file
    source_id: str


def manifest_sha256(folder: Path) -> str:
    return hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()


def inspect_artifact(folder: Path) -> ArtifactInfo:
    """Verify an exported model version folder (python -m training.export) and describe it."""
    folder = Path(folder)
    manifest = verify_manifest(folder, SERVING_FORMAT, PublishError,
                               not_found=f"{folder} is not an exported qanchor model version; export one with "
                               "python -m training.export --out SCRATCH_REPO and pass SCRATCH_REPO/qanchor/1/models/V",
                               fix="export the model again")
    return ArtifactInfo(folder, str(manifest.get("model_version", "")), manifest_sha256(folder),
                        str(manifest.get("source_id", "")))


def is_published(folder: Path) -> bool:
    """A version folder put there by `publish_artifact` (the registry's), not by an export."""
    return (Path(folder) / PUBLISHED_MARKER).is_file()


def unpublish(repository: Path, version: str) -> Path | None:
    """Remove a version folder `publish_artifact` put into `repository` -> its path, or None when there is none.
    One rename, then the delete: the model server sees the whole folder or none (it ignores dot-folders). A folder
    without the PUBLISHED marker is an export, not the registry's: PublishError, nothing removed."""
    valid_version(version)
    folder = versions_dir(repository) / version
    if not folder.is_dir():
        return None
    if not is_published(folder):
        raise PublishError(f"{folder} was not put there by `qanchor model publish` (no {PUBLISHED_MARKER} marker): it "
                           "is an export the stack or an operator manages; it stays (remove it by hand if you mean to)")
    gone = folder.with_name(f".retired-{version}-{os.getpid()}")
    folder.rename(gone)
    shutil.rmtree(gone, ignore_errors=True)
    log.info("model version unpublished", extra={"model_version": version, "path": str(folder)})
    return folder


def versions_dir(repository: Path) -> Path:
    return Path(repository) / MODEL_NAME / TRITON_VERSION / "models"


def publish_artifact(source: Path, repository: Path, version: str, expected_sha256: str) -> Path:
    """Copy `source` to `<repository>/qanchor/1/models/<version>` atomically; -> the published folder."""
    valid_version(version)
    root = versions_dir(repository)
    if not root.is_dir():
        raise PublishError(f"{root} does not exist: {repository} is not a qanchor model repository; pass the "
                           "repository Triton serves (--repository), or export a model into it first")
    target = root / version
    if target.exists():
        if (target / MANIFEST).is_file() and manifest_sha256(target) == expected_sha256:
            log.info("model version already published", extra={"model_version": version, "path": str(target)})
            return target
        raise PublishError(f"{target} already holds other weights; a published version is immutable: register "
                           "and publish the new artifact under a new version")
    info = inspect_artifact(source)
    if info.manifest_sha256 != expected_sha256:
        raise PublishError(f"{source}/{MANIFEST} has sha256 {info.manifest_sha256}, the registry has "
                           f"{expected_sha256}: the artifact changed since it was registered; register it again "
                           "under a new version")
    if info.model_version != version:
        raise PublishError(f"{source} was exported as model version {info.model_version!r}, not {version!r}; "
                           f"register it as {info.model_version!r} or export it with --model-version {version}")
    # A fresh dot-folder per publish (the backend ignores dot-folders); copytree gives it the source's mode.
    staging = Path(tempfile.mkdtemp(prefix=f".publishing-{version}-", dir=root))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        (staging / PUBLISHED_MARKER).write_text(json.dumps({"model_version": version, "sha256": expected_sha256},
                                                           sort_keys=True) + "\n")
        copied = inspect_artifact(staging)  # what Triton will read, not what we meant to copy
        if copied.manifest_sha256 != expected_sha256:
            raise PublishError(f"the copy in {staging} differs from {source}; check the disk and publish again")
        try:
            staging.rename(target)  # one rename: the backend sees no folder or the whole one
        except OSError:
            # A concurrent publish of the same version got there first: fine if it is the same artifact.
            if not ((target / MANIFEST).is_file() and manifest_sha256(target) == expected_sha256):
                raise
            shutil.rmtree(staging, ignore_errors=True)
            return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("model version published", extra={"model_version": version, "path": str(target),
                                               "sha256": expected_sha256[:12]})
    return target
