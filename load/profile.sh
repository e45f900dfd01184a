#!/usr/bin/env bash
# CPU profile of the switch under load (issue 22): load/run.sh at 500 CAPS with 2 s calls
# (15,000 calls), and `perf record -F 999 -g` on the switch for 15 s from 8 s into the run.
#
#   load/profile.sh NAME [BIN] [run.sh args...]
#
# BIN defaults to target/release/switchyard; extra arguments go to load/run.sh (e.g.
# --pre-edge for a build before issue 16). Writes load/out/profile-NAME/ (the run) and
# load/out/profile-NAME.perf.data, then prints the flat profile's top 40 symbols:
#   perf report -i load/out/profile-NAME.perf.data --no-children --sort symbol -g none --stdio
# Needs perf (Debian linux-perf) and permission to profile the switch's process.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
name=${1:?usage: load/profile.sh NAME [BIN] [run.sh args...]}
shift
bin=${1:-$here/../target/release/switchyard}
[ $# -eq 0 ] || shift
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
out=$here/out/profile-$name
rm -rf "$out"
"$here/run.sh" --target switch --switch-bin "$bin" --rate 500 --duration-ms 2000 --calls 15000 \
    --out "$out" "$@" >"$out.log" 2>&1 &
run=$!
pid=""
for _ in $(seq 1 150); do
    pid=$(pgrep -f "^$bin --config" | head -1 || true)
    [ -n "$pid" ] && break
    sleep 0.2
done
[ -n "$pid" ] || { echo "profile.sh: the switch did not start (see $out.log)" >&2; exit 2; }
sleep 8
perf record -F 999 -g -p "$pid" -o "$out.perf.data" -- sleep 15 >/dev/null 2>&1
wait "$run" || true
grep -E "^switch CPU|^result" "$out.log" || true
perf report -i "$out.perf.data" --no-children --sort symbol -g none --stdio 2>/dev/null |
    grep -v '^#' | grep '%' | head -40
