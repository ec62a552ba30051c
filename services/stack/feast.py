"""The stack's Feast step: `feast apply` of feature_repo/ against a config under the state dir.

Feast runs no server here (local provider, SQLite or Redis online store), so this is a step, not a process.
The config and apply logic belong to `services.common.feast_store`; this module only calls it, remembers what
was applied (run/feast.json) and skips re-applying when neither the definitions nor the store changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from services.common.settings import repo_root
from services.stack.components import StackError
from services.stack.settings import StackSettings

log = logging.getLogger(__name__)

FEATURE_REPO = Path("feature_repo")


@dataclass(frozen=True)
class FeastRecord:
    config: str
    online_store: str
    redis_url: str | None
    definitions_sha256: str
    applied_at: float


def definitions_digest(feature_repo: Path) -> str:
    """sha256 over the feature repo's definition files, so a changed definition triggers a new apply."""
    h = hashlib.sha256()
    if feature_repo.is_dir():
        for path in sorted(p for p in feature_repo.rglob("*") if p.suffix in (".py", ".yaml", ".yml")
                           and "__pycache__" not in p.parts):
            h.update(str(path.relative_to(feature_repo)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


class FeastStep:
    name = "feast"

    def __init__(self, settings: StackSettings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url if settings.online_store == "redis" else None
        self.record_path = settings.layout.pid_file(self.name)
        self.log_path = settings.layout.log_file(self.name)

    def load_record(self) -> FeastRecord | None:
        try:
            return FeastRecord(**json.loads(self.record_path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def applied_config(self) -> Path | None:
        """feature_store.yaml of the last successful apply, if it is still there."""
        record = self.load_record()
        if record and Path(record.config).exists():
            return Path(record.config)
        return None

    def up(self) -> tuple[str, Path | None]:
        """Apply when needed; returns (outcome, config path). Outcome: applied | unchanged | skipped."""
        try:
            from services.common import feast_store
        except ImportError as exc:
            log.warning("feast step skipped", extra={"reason": str(exc)})
            return f"skipped (services.common.feast_store not importable: {exc})", None
        if not hasattr(feast_store, "apply") or not hasattr(feast_store, "render_config"):
            return "skipped (services.common.feast_store has no apply/render_config yet)", None

        digest = definitions_digest(repo_root() / FEATURE_REPO)
        record = self.load_record()
        if (record and record.definitions_sha256 == digest and record.online_store == self.settings.online_store
                and record.redis_url == self.redis_url and Path(record.config).exists()):
            return "unchanged", Path(record.config)

        state_dir = self.settings.layout.root
        t0 = time.monotonic()
        handler = _file_handler(self.log_path)
        try:
            # apply() renders the config itself and returns its path.
            result = feast_store.apply(state_dir, online_store=self.settings.online_store, redis_url=self.redis_url)
            config = Path(result) if isinstance(result, (str, Path)) else Path(feast_store.render_config(
                state_dir, online_store=self.settings.online_store, redis_url=self.redis_url))
        except Exception as exc:  # feast raises many types; the user needs the message and the log either way
            log.exception("feast apply failed")
            raise StackError(self.name, f"feast apply failed: {exc}", log_path=self.log_path,
                             hint="run `feast plan` in feature_repo/ with the config under "
                                  "$QANCHOR_STATE_DIR to see which definition is wrong") from exc
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
        rec = FeastRecord(config=str(config), online_store=self.settings.online_store, redis_url=self.redis_url,
                          definitions_sha256=digest, applied_at=time.time())
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        self.record_path.write_text(json.dumps(asdict(rec), indent=1))
        log.info("feast applied", extra={"config": str(config), "online_store": self.settings.online_store,
                                         "seconds": round(time.monotonic() - t0, 1)})
        return "applied", config


def _file_handler(path: Path) -> logging.Handler:
    # Feast logs through `logging`; while apply runs, a copy goes to logs/feast.log for `stack logs feast`.
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler
