"""Runs one of sipvicious's tools (svmap, svwar, svcrack) as installed, with its socket bound
to a chosen source address, and optionally a phone's User-Agent instead of
"friendly-scanner". sipvicious 0.3.3's svwar and svcrack ignore -b (their main() does not
pass it on) and bind 0.0.0.0, so on loopback every tool would send from 127.0.0.1; and no
tool has an option for its User-Agent.

    python3 sv.py TOOL SOURCE_IP [--as-phone] TOOL-ARGS...
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
sys.argv = [tool] + args
importlib.import_module("sipvicious." + tool).main()
