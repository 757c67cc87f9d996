#!/usr/bin/env bash
# Set up (Debian packages, .venv, the project) and run the demo: two throw-away local registries,
# a seeded source, `imagesync sync` twice. No cluster, no network beyond 127.0.0.1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/tests/setup-env.sh"
exec "$VENV/bin/python" "$ROOT/examples/demo.py"
