#!/usr/bin/env python3
"""Talk to a running baresip through its ctrl_tcp module (JSON in netstrings).

    baresip_ctrl.py HOST:PORT COMMAND [PARAMS]   run one command (e.g. dial sip:1002@acme.test,
                                                 transfer sip:1003@acme.test, hangup, quit);
                                                 prints the response's data, exit 1 if not ok

ctrl_tcp frames each message as a netstring, `<length>:<json>,`; a command is
{"command": ..., "params": ..., "token": ...} and its answer {"response": true, "ok": ...,
"data": ..., "token": ...}; events ({"event": true, "type": ...}) may come in between and
are skipped. baresip 1.0's ctrl_tcp keeps one connection: a new one replaces the last, so
events cannot be followed on a second connection while commands are sent.
"""
import json
import socket
import sys
import time


def frames(sock):
    buf = b""
    while True:
        while True:
            colon = buf.find(b":")
            if colon < 0:
                break
            n = int(buf[:colon])
            if len(buf) < colon + 1 + n + 1:
                break
            yield json.loads(buf[colon + 1:colon + 1 + n])
            buf = buf[colon + 1 + n + 1:]
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    host, port = sys.argv[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    token = f"t{time.time_ns()}"
    cmd = {"command": sys.argv[2], "params": " ".join(sys.argv[3:]), "token": token}
    body = json.dumps(cmd).encode()
    sock.sendall(b"%d:%s," % (len(body), body))
    for msg in frames(sock):
        if msg.get("response") and msg.get("token") == token:
            print(msg.get("data", ""))
            return 0 if msg.get("ok") else 1
    print("no response", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
