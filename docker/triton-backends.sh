#!/usr/bin/env bash
# Assemble a Triton backend directory from the nvidia-pytriton wheel: its Python backend plus the backend stub
# built for this interpreter's Python version (the wheel ships stubs for 3.8-3.13).
#
#   docker/triton-backends.sh SITE_PACKAGES DEST_DIR
#
# Used by docker/model.Dockerfile at build time, and by the deployment integration test on the model env,
# so the image recipe is exercised for real. Fails if a shared library of tritonserver or the stub is missing.
set -euo pipefail
sp="$1"
dest="$2"
py="${QANCHOR_TRITON_PYTHON:-python3}"
pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
src="$sp/pytriton/tritonserver"
stub="$src/python_backend_stubs/$pyver/triton_python_backend_stub"
[ -x "$src/bin/tritonserver" ] || { echo "event=triton_backends_failed reason='no tritonserver in $src' hint='install nvidia-pytriton (requirements/model.lock)'" >&2; exit 1; }
[ -f "$stub" ] || { echo "event=triton_backends_failed reason='no Python $pyver stub at $stub'" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
cp -r "$src/backends" "$dest"
cp "$stub" "$dest/python/triton_python_backend_stub"
missing="$(ldd "$src/bin/tritonserver" "$dest/python/triton_python_backend_stub" | grep 'not found' || true)"
if [ -n "$missing" ]; then
  echo "event=triton_backends_failed reason='missing shared libraries' detail='$missing' hint='set LD_LIBRARY_PATH to the interpreter LIBDIR and site-packages/nvidia_pytriton.libs'" >&2
  exit 1
fi
echo "event=triton_backends_ok dest=$dest python=$pyver" >&2
