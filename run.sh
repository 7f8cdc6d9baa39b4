#!/usr/bin/env bash
# ./run.sh              the whole pipeline on the embedded competition -> submissions/
# ./run.sh --quick      a first submission in a few minutes
# ./run.sh --data DIR   the same pipeline on any competition folder
# ./run.sh test [ARGS]  install and run the test suite (ARGS go to pytest)
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "run.sh: creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi

# Install only when pyproject.toml changed since the last install (a stamp holds its hash and
# the extras installed): a run needs comp alone, the tests also the dev tools and Ray.
stamp="$VENV/.comp-installed"
extras=""
if [ "${1:-}" = "test" ]; then extras="[dev,ray]"; fi
want="$(sha1sum pyproject.toml | cut -d' ' -f1) $extras"
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" != "$want" ] && [ "$have" != "$want[dev,ray]" ]; then
  echo "run.sh: installing comp$extras and its dependencies (CPU torch) into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch is pinned in pyproject.toml: the pinned release is the CPU build
  "$VENV/bin/python" -m pip install -q -e ".$extras"
  echo "$want" > "$stamp"
fi

export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1

if [ "${1:-}" = "test" ]; then
  shift
  exec "$VENV/bin/python" -m pytest "$@"
fi
exec "$VENV/bin/comp" run "$@"
