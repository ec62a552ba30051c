"""feature_store.yaml rendering (no Feast import needed: the file is plain YAML)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.common.feast_store import config_path, redis_connection_string, render_config


def test_sqlite_config_keeps_everything_under_the_state_dir(tmp_path: Path) -> None:
    path = render_config(tmp_path / "state")
    assert path == config_path(tmp_path / "state").resolve()
    cfg = yaml.safe_load(path.read_text())
    feast_dir = (tmp_path / "state" / "feast").resolve()
    assert cfg["project"] == "qanchor" and cfg["provider"] == "local"
    assert cfg["online_store"] == {"type": "sqlite", "path": str(feast_dir / "online_store.db")}
    assert cfg["registry"]["path"] == str(feast_dir / "registry.db")
    assert cfg["entity_key_serialization_version"] == 3


def test_redis_config_uses_feast_connection_string(tmp_path: Path) -> None:
    cfg = yaml.safe_load(render_config(tmp_path, "redis", "redis://127.0.0.1:23079/2").read_text())
    assert cfg["online_store"]["type"] == "redis"
    # socket timeouts: a hung Redis fails the lookup instead of holding a gateway worker forever
    assert cfg["online_store"]["connection_string"] == "127.0.0.1:23079,db=2,socket_timeout=2,socket_connect_timeout=2"
    assert cfg["online_store"]["skip_dedup"] is True


def test_rerender_switches_store_in_place(tmp_path: Path) -> None:
    render_config(tmp_path, "redis", "redis://localhost:1/0")
    cfg = yaml.safe_load(render_config(tmp_path).read_text())
    assert cfg["online_store"]["type"] == "sqlite"
    assert not list((tmp_path / "feast").glob("*.tmp"))


@pytest.mark.parametrize("url, expected", [
    ("redis://h:6380", "h:6380,db=0"),
    ("redis://:s3cr%40t@h:1/3", "h:1,db=3,password=s3cr@t"),
    ("rediss://h:1/0", "h:1,db=0,ssl=true"),
    ("h:1,db=0", "h:1,db=0"),  # already Feast's form
])
def test_redis_url_conversion(url: str, expected: str) -> None:
    assert redis_connection_string(url) == expected


def test_bad_store_choices_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs redis_url"):
        render_config(tmp_path, "redis")
    with pytest.raises(ValueError, match="not one of"):
        render_config(tmp_path, "dynamodb")
    with pytest.raises(ValueError, match="redis://"):
        redis_connection_string("http://h:1")
