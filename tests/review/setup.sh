#!/usr/bin/env bash
# What the review tests need beyond `pip install -e ".[dev,review]"`: Debian's chromium (the page test)
# and Label Studio's own virtualenv, built once at $COTFORGE_LABEL_STUDIO_VENV so that the tests only
# start the server (`cotforge review serve` would otherwise build it on first use, 1-2 min).
# Usage: COTFORGE_LABEL_STUDIO_VENV=/path/to/venv bash tests/review/setup.sh
set -euo pipefail
: "${COTFORGE_LABEL_STUDIO_VENV:?set COTFORGE_LABEL_STUDIO_VENV to the folder of the Label Studio virtualenv}"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q && apt-get install -y -q chromium
  else
    echo "chromium is missing: run 'apt-get install -y chromium' as root (the page test is skipped without it)" >&2
  fi
fi
cotforge review serve --install-only
