#!/usr/bin/env python3
"""Send one request to the Switchyard API signed with an access key (AK/SK).

    swy-sign.py --url http://127.0.0.1:8080 --key ak_... --secret sk_... GET '/cdrs?limit=10'
    swy-sign.py ... POST /agents/acme/a1/not-ready '{"reason": "lunch"}'

The key and secret may also come from SWY_KEY and SWY_SECRET. Prints the response body;
exits 0 for a 2xx, 1 otherwise. The signature (docs/api-access.md) is HMAC-SHA256, keyed
with the secret, over these lines joined by "\\n":

    SWY1-HMAC-SHA256, METHOD, path, query as sent, Unix seconds, nonce, hex SHA-256 of the body
"""
import argparse
import hashlib
import hmac
import os
import secrets
import sys
import time
import urllib.error
import urllib.request

SCHEME = "SWY1-HMAC-SHA256"


def sign(secret, method, path, query, date, nonce, body):
    text = "\n".join(
        [SCHEME, method, path, query, date, nonce, hashlib.sha256(body).hexdigest()]
    )
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def signed_headers(key, secret, method, target, body):
    path, _, query = target.partition("?")
    date = str(int(time.time()))
    nonce = secrets.token_hex(16)
    signature = sign(secret, method, path, query, date, nonce, body)
    return {
        "Authorization": f"{SCHEME} Credential={key}, Signature={signature}",
        "X-Swy-Date": date,
        "X-Swy-Nonce": nonce,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--key", default=os.environ.get("SWY_KEY"))
    p.add_argument("--secret", default=os.environ.get("SWY_SECRET"))
    p.add_argument("method")
    p.add_argument("target", help="path with its query, e.g. '/cdrs?limit=10'")
    p.add_argument("body", nargs="?", default="")
    a = p.parse_args()
    if not a.key or not a.secret:
        p.error("--key and --secret (or SWY_KEY, SWY_SECRET) are required")
    body = a.body.encode()
    headers = signed_headers(a.key, a.secret, a.method.upper(), a.target, body)
    if body:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(
        a.url.rstrip("/") + a.target, data=body or None, method=a.method.upper(), headers=headers
    )
    try:
        with urllib.request.urlopen(req) as r:
            sys.stdout.write(r.read().decode())
            return 0
    except urllib.error.HTTPError as e:
        sys.stdout.write(e.read().decode())
        return 1


if __name__ == "__main__":
    sys.exit(main())
