#!/usr/bin/env bash
# Creates (or reuses) the two Python environments and the system packages qanchor needs.
#
#   services env (.venv)       : gateway, registry, ingest, CLI, tests   (numpy 2, Feast)
#   model env    (.venv-model) : Triton server + Python backend, torch, training, tuning worker (numpy < 2)
#
# Environments live in a cache outside the clone, keyed by the sha256 of their lock file (+ data list and
# Python version), so a fresh clone with unchanged locks reuses them. .venv and .venv-model are symlinks.
# Override the cache location with QANCHOR_CACHE_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${QANCHOR_CACHE_DIR:-$HOME/.cache/qanchor}"
PY="${QANCHOR_PYTHON:-python3.11}"
mkdir -p "$CACHE"
log() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages: redis-server (Debian), Java 17 + Maven for the Kafka broker -------------------------
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
if ((${#need_apt[@]})); then
  log "installing system packages: ${need_apt[*]}"
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null \
    || { log "ERROR: could not install ${need_apt[*]}; install them with your package manager and re-run"; exit 1; }
fi
# redis-server from Debian starts a system service on install; we run our own on a private port.
command -v "$PY" >/dev/null 2>&1 || { log "ERROR: $PY not found; set QANCHOR_PYTHON to a Python 3.11 interpreter"; exit 1; }

# --- uv, in its own small bootstrap venv -----------------------------------------------------------------
UV_VERSION=0.13.8
UV="$CACHE/bootstrap-uv-$UV_VERSION/bin/uv"
if [ ! -x "$UV" ]; then
  log "bootstrapping uv $UV_VERSION"
  "$PY" -m venv "$CACHE/bootstrap-uv-$UV_VERSION"
  "$CACHE/bootstrap-uv-$UV_VERSION/bin/pip" install -q "uv==$UV_VERSION"
fi
export UV_CACHE_DIR="$CACHE/uv-cache"

make_env() {  # make_env NAME LOCKFILE LINK
  local name="$1" lock="$2" link="$3"
  local key
  key="$( (cat "$ROOT/$lock" "$ROOT/requirements/data.txt"; "$PY" -VV; echo "$UV_VERSION") | sha256sum | cut -c1-16)"
  local dir="$CACHE/venvs/$name-$key"
  if [ -f "$dir/.complete" ]; then
    log "$name env: reusing $dir"
  else
    log "$name env: creating $dir (first time takes a few minutes)"
    rm -rf "$dir"; mkdir -p "$CACHE/venvs"
    "$UV" venv -q -p "$PY" "$dir"
    "$UV" pip install -q -p "$dir/bin/python" -r "$ROOT/$lock"
    "$UV" pip install -q -p "$dir/bin/python" --no-deps -r "$ROOT/requirements/data.txt"
    touch "$dir/.complete"
  fi
  # The project itself, editable and without deps: cheap, so done on every run (the clone path may differ).
  "$UV" pip install -q -p "$dir/bin/python" --no-deps -e "$ROOT"
  # The editable mapping names the last clone that ran this; `qanchor` runs the clone it is called from instead.
  { echo "#!$dir/bin/python"; cat "$ROOT/scripts/qanchor_launcher.py"; } > "$dir/bin/qanchor.tmp"
  chmod +x "$dir/bin/qanchor.tmp" && mv -f "$dir/bin/qanchor.tmp" "$dir/bin/qanchor"
  ln -sfn "$dir" "$ROOT/$link"
  # Keep the cache bounded, without pulling an environment from under another clone on this machine that still
  # uses it (several checkouts share the cache, each on its own lock): beyond the two most recently used, an
  # environment goes only once no setup has used it for QANCHOR_ENV_PRUNE_DAYS (default 14) days.
  touch "$dir"
  ls -1dt "$CACHE/venvs/$name"-*/ 2>/dev/null | tail -n +3 | while read -r old; do
    if [ -n "$(find "$old" -maxdepth 0 -mtime +"${QANCHOR_ENV_PRUNE_DAYS:-14}" 2>/dev/null)" ]; then
      log "$name env: pruning unused $old"; rm -rf "$old"
    fi
  done
}

want="${1:-all}"
case "$want" in
  all) make_env services requirements/services.lock .venv; make_env model requirements/model.lock .venv-model ;;
  services) make_env services requirements/services.lock .venv ;;
  model) make_env model requirements/model.lock .venv-model ;;
  *) log "usage: $0 [all|services|model]"; exit 2 ;;
esac
log "done: .venv -> $(readlink "$ROOT/.venv" 2>/dev/null || echo -), .venv-model -> $(readlink "$ROOT/.venv-model" 2>/dev/null || echo -)"
