#!/usr/bin/env bash
# CI smoke load: 200 calls at 20 CAPS, 1 s each, through the switch
# (about 11 s of calls plus up to 40 s waiting for the switch to drain).
# Builds target/release/switchyard first if it is missing. Exits non-zero on
# any failed call or if the switch's calls_active does not return to 0.
# Extra arguments go to run.sh and win (e.g. --switch-bin PATH, --out DIR).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/run.sh" --target switch --rate 20 --duration-ms 1000 --calls 200 "$@"
