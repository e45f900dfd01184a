"""Runs one of sipvicious's tools (svmap, svwar, svcrack) as installed, with its socket bound
to a chosen source address, and optionally as a better-behaved attacker. sipvicious 0.3.3's
svwar and svcrack ignore -b (their main() does not pass it on) and bind 0.0.0.0, so on
loopback every tool would send from 127.0.0.1.

    python3 sv.py TOOL SOURCE_IP [--as-phone] TOOL-ARGS...

--as-phone: a phone's User-Agent instead of "friendly-scanner" (no tool has an option for
it), and for svcrack a nonce count of 1 with each fresh nonce, as RFC 7616 wants: svcrack
counts on across nonces, and a server that checks counts answers those guesses stale=true,
so it would never find a password whatever the defences (a fixed tool is the real threat).
"""
import importlib
import socket
import sys

sys.path.insert(0, "/usr/share/sipvicious")
tool, ip, args = sys.argv[1], sys.argv[2], sys.argv[3:]
_bind = socket.socket.bind


def bind(self, addr):
    if isinstance(addr, tuple) and addr[0] in ("", "0.0.0.0"):
        addr = (ip,) + tuple(addr[1:])
    return _bind(self, addr)


socket.socket.bind = bind
if args and args[0] == "--as-phone":
    args = args[1:]
    from sipvicious.libs import svhelper

    code, defaults = svhelper.makeRequest.__code__, list(svhelper.makeRequest.__defaults__)
    first_default = code.co_argcount - len(defaults)
    defaults[code.co_varnames.index("useragent") - first_default] = "Linphone/5.2.0 (belle-sip/5.2.0)"
    svhelper.makeRequest.__defaults__ = tuple(defaults)
    if tool == "svcrack":
        from sipvicious import svcrack

        make = svcrack.makeRequest

        def make_request(*a, **kw):
            # Each guess answers a fresh challenge: its count is 1.
            auth = kw.get("auth") if "auth" in kw else (a[9] if len(a) > 9 else None)
            if isinstance(auth, dict) and "noncecount" in auth:
                auth["noncecount"] = 1
            return make(*a, **kw)

        svcrack.makeRequest = make_request
sys.argv = [tool] + args
importlib.import_module("sipvicious." + tool).main()
