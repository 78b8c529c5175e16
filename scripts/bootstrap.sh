#!/usr/bin/env bash
# Builds .venv on Python 3.10 with the exact versions in requirements.lock.
# TFX 1.16 supports Python 3.9-3.10 only. Set KOA_PYTHON to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp="$venv/.koa-installed"
if [ -f "$stamp" ] && [ "$stamp" -nt requirements.lock ] && [ "$stamp" -nt requirements.txt ] \
    && [ "$stamp" -nt setup.py ]; then
  exit 0
fi

find_python() {
  local candidate
  for candidate in "${KOA_PYTHON:-}" python3.10 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python \
      /root/.pyenv/versions/3.10*/bin/python /usr/bin/python3.10 /usr/local/bin/python3.10; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

if ! python=$(find_python); then
  echo "error: no Python 3.10 found (TFX 1.16 needs 3.9-3.10)." >&2
  echo "Install one (e.g. 'pyenv install 3.10.13') or set KOA_PYTHON=/path/to/python3.10." >&2
  exit 1
fi
echo "bootstrap: building $venv with $python" >&2
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip wheel setuptools
# Every install goes through the lock file: an unconstrained Beam or TFX resolve pulls
# protobuf/pyarrow versions that break TensorFlow.
"$venv/bin/pip" install --quiet -c requirements.lock -r requirements.txt
"$venv/bin/pip" install --quiet --no-deps -e .
touch "$stamp"
echo "bootstrap: $venv ready" >&2
