"""Model versions that appear in the model repository while Triton runs (published by `qanchor model publish`).

Triton's explicit model control is never asked to reload `qanchor`: the Python backend itself looks for
`<qanchor>/1/models/<version>/` the first time a request names a version it does not hold, verifies the artifact's
sha256 manifest and serves it. `publish` moves a complete folder into place with one rename (training.export.publish),
so a half-copied version is never seen; dot-folders (staging) are ignored.

    find = VersionDirectory(root, load=lambda d: load_model_artifact(d))
    loaded = find(version)            # LoadedModel, or raises RequestError (NOT_FOUND / DATA_LOSS / INVALID_ARGUMENT)

torch-free on purpose (the loader is injected): the registry's publish step and unit tests use `valid_version`.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

SERVING_FORMAT = "qanchor-serving-model/1"  # manifest format of a serving artifact (training.export.artifact)
# What a model version may be: a folder name and a Triton parameter list entry (no '/', no ',', no leading dot).
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# The text every "this version is not served" error starts with; the gateway maps it to NOT_FOUND.
UNKNOWN_MODEL_VERSION = "unknown model version"
INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, DATA_LOSS = 3, 5, 9, 15


class VersionError(ValueError):
    """A model version that cannot be served; `status` is the gRPC code a client should see."""

    def __init__(self, message: str, status: int = INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.status = status


def valid_version(version: str) -> str:
    """-> version, or raises VersionError saying what a version may contain."""
    if not VERSION_PATTERN.match(version or ""):
        raise VersionError(f"model version {version!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return version


def _fingerprint(folder: Path, st: os.stat_result) -> tuple:
    """Changes whenever the folder or a file in it is replaced: inode + ctime (a copy keeps mtimes, and a freed inode
    number is reused, but a new inode always gets a new ctime)."""
    try:
        files = tuple(sorted((e.name, e.inode(), e.stat().st_ctime_ns, e.stat().st_size) for e in os.scandir(folder)))
    except OSError:
        files = ()
    return (st.st_ino, st.st_ctime_ns, files)


class VersionDirectory:
    """Loads versions from `root/<version>` on demand; remembers a broken folder until it changes on disk, so a
    corrupt publish costs one sha256 pass, not one per request."""

    def __init__(self, root: Path, load: Callable[[Path], Any], check: Callable[[Any], None] | None = None) -> None:
        """`load(folder)` -> LoadedModel; `check(loaded)` raises VersionError for one this server cannot serve (its
        tensor contract); both failures are remembered until the folder changes."""
        self.root = Path(root)
        self._load = load
        self._check = check
        self._failed: dict[str, tuple[tuple, VersionError]] = {}

    def on_disk(self) -> list[str]:
        """Version folders present now (published, complete), sorted."""
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir() and VERSION_PATTERN.match(p.name))
        except OSError:
            return []

    def __call__(self, version: str, serving: list[str]) -> Any:
        valid_version(version)
        folder = self.root / version
        try:
            st = os.stat(folder)
        except OSError:
            raise VersionError(f"{UNKNOWN_MODEL_VERSION} {version!r}: not served here, nor in the model repository "
                               f"(serving {serving}); publish it (qanchor model publish {version}) or route the A/B "
                               "arm to a served version", NOT_FOUND) from None
        key = _fingerprint(folder, st)
        failed = self._failed.get(version)
        if failed is not None and failed[0] == key:
            raise failed[1]
        try:
            loaded = self._load(folder)
            if loaded.model_version != version:
                raise VersionError(f"folder {folder} holds model version {loaded.model_version!r}, not {version!r}; "
                                   "publish the artifact under its own version", DATA_LOSS)
            if self._check is not None:
                self._check(loaded)
        except VersionError as err:
            self._failed[version] = (key, err)
            log.error("event=model_version_refused model_version=%s error=%r", version, str(err))
            raise
        except Exception as exc:  # ServingArtifactError (sha256, missing file) or a model that does not build
            err = VersionError(f"model version {version!r} in the model repository cannot be loaded ({exc}); "
                               f"publish it again (qanchor model publish {version})", DATA_LOSS)
            self._failed[version] = (key, err)
            log.error("event=model_version_load_failed model_version=%s error=%r", version, str(exc))
            raise err from exc
        self._failed.pop(version, None)
        return loaded
