#!/bin/sh
# Regenerates Switchyard's default prompts with espeak-ng (Debian package `espeak-ng`).
#
# The file name (without .wav) is the prompt id used by `media::prompts`. espeak-ng writes
# 22.05 kHz mono 16-bit PCM; the files are shipped as written and converted to 8 kHz when the
# prompt library loads them.
#
# Usage: prompts/generate.sh [output-dir]   (default: the directory of this script)
set -eu

dir=${1:-$(dirname "$0")}
command -v espeak-ng >/dev/null 2>&1 || {
    echo "generate.sh: espeak-ng not found (apt-get install -y espeak-ng)" >&2
    exit 1
}
mkdir -p "$dir"

say() { # id text
    espeak-ng -v en-us -s 150 -w "$dir/$1.wav" "$2"
}

for n in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 30 40 50 60 70 80 90; do
    say "$n" "$n"
done
say hundred "hundred"
say you-are-caller-number "You are caller number"
say in-the-queue "in the queue"
say estimated-wait "Your estimated waiting time is"
say minutes "minutes"
say minute "minute"
say less-than-a-minute "less than one minute"
say thank-you-for-waiting "Thank you for waiting. An agent will be with you shortly."
say all-agents-busy "All our agents are busy. Please hold."
say goodbye "goodbye"
