#!/usr/bin/env python3
"""Which of a few sine tones a recording holds, and for how long (Goertzel).

    tones.py FILE.wav FREQ[=NAME]...
    tones.py --rtp PCAP DSTPORT [--after EPOCH] FREQ[=NAME]...

The first form reads a WAV (any rate, 16-bit PCM, first channel). The second reads the
G.711 RTP (payload types 0 and 8; others, e.g. telephone-event, are skipped) sent to UDP
port DSTPORT in a packet capture (through tshark), from the first packet after EPOCH (Unix
seconds) on, payloads in arrival order: what reached that phone, whatever the phone made of
it.

Cuts the audio into 100 ms windows; a window "holds" the tone whose Goertzel power is
highest, when that power is at least 10x the next one's and the window is not silent.
Prints one JSON object: the seconds each tone was heard, the timeline as runs ("NAME from
S to E", runs of 0.2 s or more), and the length.
"""
import json
import math
import struct
import subprocess
import sys
import wave


def goertzel(samples, rate, freq):
    k = 2.0 * math.cos(2.0 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + k * s1 - s2, s1
    return s1 * s1 + s2 * s2 - k * s1 * s2


def ulaw(b):
    b = ~b & 0xFF
    t = (((b & 0x0F) << 3) + 0x84) << ((b & 0x70) >> 4)
    return (0x84 - t) if b & 0x80 else (t - 0x84)


def alaw(b):
    b ^= 0x55
    t = (b & 0x0F) << 4
    seg = (b & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if b & 0x80 else -t


ULAW = [ulaw(i) for i in range(256)]
ALAW = [alaw(i) for i in range(256)]


def read_wav(path):
    with wave.open(path, "rb") as w:
        rate, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        raw = w.readframes(n)
    if width != 2:
        raise SystemExit(json.dumps({"error": f"{width * 8}-bit samples, 16 expected"}))
    return struct.unpack("<%dh" % (len(raw) // 2), raw)[::ch], rate


def read_rtp(pcap, port, after):
    out = subprocess.run(
        ["tshark", "-r", pcap, "-d", f"udp.port=={port},rtp",
         "-Y", f"udp.dstport=={port} && rtp && frame.time_epoch >= {after}",
         "-T", "fields", "-e", "rtp.p_type", "-e", "rtp.payload"],
        capture_output=True, text=True, check=True).stdout
    pcm = []
    for line in out.splitlines():
        pt, _, payload = line.partition("\t")
        table = {"0": ULAW, "8": ALAW}.get(pt.strip())
        if table is None or not payload:
            continue
        pcm.extend(table[b] for b in bytes.fromhex(payload.replace(":", "")))
    return pcm, 8000


def analyse(pcm, rate, tones):
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
    return {
        "seconds": {k: round(v, 1) for k, v in heard.items()},
        "timeline": ", ".join(f"{l} {a:.1f}-{b:.1f}s" for l, a, b in runs if b - a >= 0.2),
        "length_s": round(len(pcm) / rate, 1),
    }


def main():
    args = sys.argv[1:]
    if args and args[0] == "--rtp":
        pcap, port, args = args[1], int(args[2]), args[3:]
        after = 0.0
        if args and args[0] == "--after":
            after, args = float(args[1]), args[2:]
        pcm, rate = read_rtp(pcap, port, after)
    else:
        pcm, rate = read_wav(args[0])
        args = args[1:]
    tones = []
    for spec in args:
        f, _, name = spec.partition("=")
        tones.append((float(f), name or f))
    print(json.dumps(analyse(pcm, rate, tones)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
