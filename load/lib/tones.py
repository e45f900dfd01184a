#!/usr/bin/env python3
"""Which of a few sine tones a WAV recording holds, and for how long (Goertzel).

    tones.py FILE FREQ[=NAME]...

Cuts the recording (any rate, 16-bit PCM, first channel) into 100 ms windows; a window
"holds" the tone whose Goertzel power is highest, when that power is at least 10x the
next one's and the window is not silent. Prints one JSON object: the seconds each tone
was heard, the timeline as runs ("NAME from S to E"), and the file's length.
"""
import json
import math
import struct
import sys
import wave


def goertzel(samples, rate, freq):
    k = 2.0 * math.cos(2.0 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + k * s1 - s2, s1
    return s1 * s1 + s2 * s2 - k * s1 * s2


def main():
    path, specs = sys.argv[1], sys.argv[2:]
    tones = []
    for spec in specs:
        f, _, name = spec.partition("=")
        tones.append((float(f), name or f))
    with wave.open(path, "rb") as w:
        rate, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        raw = w.readframes(n)
    if width != 2:
        print(json.dumps({"error": f"{width * 8}-bit samples, 16 expected"}))
        return 1
    pcm = struct.unpack("<%dh" % (len(raw) // 2), raw)[::ch]
    win = rate // 10
    heard = {name: 0.0 for _, name in tones}
    runs = []
    for i in range(0, len(pcm) - win + 1, win):
        chunk = pcm[i:i + win]
        energy = sum(x * x for x in chunk) / win
        label = "silence"
        if energy > 1e4:  # about -50 dBFS
            powers = sorted(((goertzel(chunk, rate, f), name) for f, name in tones), reverse=True)
            best = powers[0]
            label = best[1] if len(powers) == 1 or best[0] >= 10 * powers[1][0] else "other"
        if label in heard:
            heard[label] += 0.1
        t = i / rate
        if runs and runs[-1][0] == label:
            runs[-1][2] = t + 0.1
        else:
            runs.append([label, t, t + 0.1])
    print(json.dumps({
        "seconds": {k: round(v, 1) for k, v in heard.items()},
        "timeline": ", ".join(f"{l} {a:.1f}-{b:.1f}s" for l, a, b in runs if b - a >= 0.2),
        "length_s": round(len(pcm) / rate, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
