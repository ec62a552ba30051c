#!/usr/bin/env bash
# Build (once) or reuse grpcurl, a gRPC client that sends no deadline by default and reads services through
# server reflection; prints its path. The gateway test `tests/integration/test_gateway_grpcurl.py` calls every
# RPC with it. Built with Go from the Go module proxy into a cache outside the clone (no pip/apt package exists).
#
# Environment:
#   QANCHOR_CACHE_DIR        cache root (default ~/.cache/qanchor); grpcurl goes to $QANCHOR_CACHE_DIR/bin
#   QANCHOR_GRPCURL_VERSION  release to build (default v1.9.3)
#   QANCHOR_GRPCURL          use this grpcurl binary instead of building one
set -euo pipefail
CACHE="${QANCHOR_CACHE_DIR:-$HOME/.cache/qanchor}"
VERSION="${QANCHOR_GRPCURL_VERSION:-v1.9.3}"
GRPCURL="${QANCHOR_GRPCURL:-$CACHE/bin/grpcurl-$VERSION}"
log() { printf 'event=%s\n' "$*" >&2; }

if [ ! -x "$GRPCURL" ]; then
  command -v go >/dev/null 2>&1 || {
    log "grpcurl_missing path=$GRPCURL hint='install Go (https://go.dev/dl) or set QANCHOR_GRPCURL to a grpcurl binary'"
    exit 1
  }
  mkdir -p "$CACHE/bin"
  gobin="$(mktemp -d)"
  start=$(date +%s)
  log "grpcurl_build version=$VERSION into=$GRPCURL (first time: a few minutes)"
  GOBIN="$gobin" GOFLAGS=-mod=mod go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$VERSION"
  mv "$gobin/grpcurl" "$GRPCURL.tmp" && mv "$GRPCURL.tmp" "$GRPCURL"  # atomic: a concurrent run never sees half
  rmdir "$gobin"
  log "grpcurl_built version=$VERSION seconds=$(( $(date +%s) - start ))"
fi
echo "$GRPCURL"
