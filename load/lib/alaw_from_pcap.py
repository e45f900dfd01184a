#!/usr/bin/env python3
"""The RTP payloads (payload type 8, A-law) of a pcap file, raw, for SIPp's rtp_stream:
load/media.sh and load/conference.sh extract SIPp's own g711a.pcap with it.

    alaw_from_pcap.py IN.pcap OUT.al
"""
import struct, sys
data = open(sys.argv[1], "rb").read()
magic = struct.unpack("<I", data[:4])[0]
end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
link = struct.unpack(end + "I", data[20:24])[0]
l2 = {1: 14, 113: 16, 0: 4}[link]
off, out = 24, bytearray()
while off + 16 <= len(data):
    incl = struct.unpack(end + "I", data[off + 8:off + 12])[0]
    pkt = data[off + 16:off + 16 + incl]
    off += 16 + incl
    ip = pkt[l2:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
        continue
    rtp = ip[(ip[0] & 15) * 4 + 8:]
    if len(rtp) < 12 or rtp[0] >> 6 != 2 or rtp[1] & 0x7F != 8:
        continue
    out += rtp[12 + 4 * (rtp[0] & 15):]
if len(out) < 8000:
    sys.exit("too little A-law audio")
open(sys.argv[2], "wb").write(out)
