"""Hot reload of the A/B routing file: the gateway's live `ABConfig`, swapped only for a file that parses and
validates; a bad file is rejected with a message naming the field, and the last good config keeps serving.

Fail closed, but start anyway: a change that cannot be validated now (registry or model server down) is not
swapped in and is checked again every poll. At start-up there is no last good config, so a file that parses is
served *provisionally* until its validation succeeds (a dependency that is down fails the requests that need it
anyway); once validated, the config is checked again whenever the set of known models changes.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Protocol

from services.gateway.ab_config import ABConfig, ConfigError, ValidationUnavailable, load_config

log = logging.getLogger(__name__)


class ReloadListener(Protocol):
    def reload_succeeded(self, generation: int) -> None: ...
    def reload_failed(self) -> None: ...


Validator = Callable[[ABConfig], None]


class ConfigWatcher:
    """Holds the live ABConfig; polls the file and swaps in validated changes.

    Change detection uses the stat of the *resolved* file (a Kubernetes ConfigMap update swaps a `..data`
    symlink, which gives a new inode even when mtime does not move) and then a sha256 of the content, so
    touching a file without changing it is not a reload.
    """

    def __init__(self, path: str | os.PathLike[str], validate: Validator | None = None,
                 listener: ReloadListener | None = None, interval_s: float = 5.0,
                 models: Callable[[], frozenset[str]] | None = None) -> None:
        self.path = Path(path)
        self._validate = validate
        # The known model set; a change re-validates the live config (a model it routes to may be gone).
        self._models = models
        self._validated_models: frozenset[str] | None = None
        # True while the live config has not been validated (loaded at start-up with a dependency down).
        self.provisional = False
        self._listener = listener
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._config: ABConfig | None = None
        self._stat_key: tuple[int, int, int] | None = None
        self._digest: str | None = None
        self._rejected: str | None = None  # digest of the last rejected content
        self.generation = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> ABConfig:
        cfg = self._config
        if cfg is None:
            raise ConfigError(f"no valid A/B config loaded from {self.path}: {self.last_error}")
        return cfg

    def load_initial(self) -> ABConfig:
        """First load: a bad config here is fatal (there is no last good one to keep); one that cannot be
        validated yet is served provisionally and validated by later polls."""
        if not self.poll() and self._config is None:
            raise ConfigError(self.last_error or f"could not load {self.path}")
        return self.config

    def poll(self) -> bool:
        """Check the file once; returns True if a new config was swapped in."""
        if self._config is not None:
            self._recheck()
        try:
            st = os.stat(self.path)  # follows symlinks: the ConfigMap's current target
            stat_key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stat_key == self._stat_key and self._rejected is None:
                return False
            data = self.path.read_bytes()
        except OSError as exc:
            return self._fail(f"cannot read {self.path}: {exc}; check the path and the mount")
        digest = hashlib.sha256(data).hexdigest()
        self._stat_key = stat_key
        if digest == self._digest:
            self._rejected = None
            return False
        # A rejected file is re-checked every poll (the registry may have made its version READY since), but
        # logged and counted only once per content.
        quiet = digest == self._rejected
        provisional = False
        try:
            cfg = load_config(data.decode("utf-8"), str(self.path))
            models = self._models() if self._models is not None else None
            if self._validate is not None:
                self._validate(cfg)
        except ValidationUnavailable as exc:
            if self._config is not None:  # keep the last good config: a change is never served unchecked
                self._rejected = digest
                return False if quiet else self._fail(str(exc))
            provisional, models = True, None
            log.warning("ab config served provisionally: it cannot be validated yet, validation is retried every "
                        "poll", extra={"event": "ab_config_provisional", "path": str(self.path), "error": str(exc)})
        except (ConfigError, UnicodeDecodeError) as exc:
            self._rejected = digest
            return False if quiet else self._fail(str(exc))
        with self._lock:
            self._config, self._digest, self._rejected = cfg, digest, None
            self.generation += 1
            self.last_error = None
            self.provisional, self._validated_models = provisional, models
        log.info("ab config loaded", extra={"event": "ab_config_loaded", "path": str(self.path),
                                            "generation": self.generation, "sha256": digest[:12],
                                            "scenarios": len(cfg.scenarios)})
        if self._listener is not None:
            self._listener.reload_succeeded(self.generation)
        return True

    def _recheck(self) -> None:
        """Validate the live config again when it is provisional or the known model set changed."""
        if self._validate is None:
            return
        try:
            models = self._models() if self._models is not None else None
        except ConfigError:
            return  # the model server is unreachable: nothing new to check against
        if not self.provisional and models == self._validated_models:
            return
        cfg = self._config
        assert cfg is not None
        try:
            self._validate(cfg)
        except ValidationUnavailable:
            return
        except ConfigError as exc:
            self._validated_models = models
            self.provisional = False
            log.error("the live ab config no longer validates; it keeps serving (routes to missing versions fall "
                      "back to the active prompt): fix the file", extra={"event": "ab_config_invalid",
                                                                          "path": str(self.path), "error": str(exc)})
            if self._listener is not None:
                self._listener.reload_failed()
            return
        if self.provisional:
            log.info("ab config validated", extra={"event": "ab_config_validated", "path": str(self.path),
                                                   "generation": self.generation})
        self.provisional, self._validated_models = False, models

    def _fail(self, message: str) -> bool:
        self.last_error = message
        kept = f"keeping generation {self.generation}" if self._config is not None else "no config loaded"
        log.error(f"ab config rejected, {kept}", extra={"event": "ab_config_rejected", "path": str(self.path),
                                                        "error": message})
        if self._listener is not None:
            self._listener.reload_failed()
        return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ab-config-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.poll()
            except Exception:  # a watcher that dies silently would freeze the config forever
                log.exception("ab config poll crashed", extra={"event": "ab_config_poll_crashed",
                                                               "path": str(self.path)})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval_s + 1)
