#!/usr/bin/env python3
"""A webhook receiver for tests: verifies wattchdog's signature, and the Standard Webhooks
one when sent (key = base64 of the `whsec_` secret, as the spec's libraries decode it), with
Python's own hmac (independently of the Rust implementation), refuses the first N deliveries with 503
to simulate an outage, and appends one JSON line per request to OUT.

    webhook_receiver.py --port P --secret S --fail-first N --out OUT
"""
import argparse
import base64
import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    lock = threading.Lock()
    state = {"seen": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            sig = self.headers.get("X-Wattchdog-Signature", "")
            parts = dict(p.split("=", 1) for p in sig.split(",") if "=" in p)
            expected = hmac.new(a.secret.encode(), f"{parts.get('t', '')}.".encode() + body,
                                hashlib.sha256).hexdigest()
            valid = hmac.compare_digest(expected, parts.get("v1", ""))
            standard = self.headers.get("webhook-signature")
            if standard is not None and a.secret.startswith("whsec_"):
                key = base64.b64decode(a.secret[len("whsec_"):])
                signed = (f"{self.headers.get('webhook-id')}.{self.headers.get('webhook-timestamp')}."
                          .encode() + body)
                mac = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
                valid = valid and any(hmac.compare_digest(f"v1,{mac}", s) for s in standard.split())
            elif standard is not None:
                valid = False
            with lock:
                state["seen"] += 1
                refuse = state["seen"] <= a.fail_first
                try:
                    alert = json.loads(body)
                    alert_id = alert.get("id")
                    # What the snapshot says, without the wall-clock field.
                    snapshot = {k: alert.get(k) for k in ("status", "findings", "severity", "last_seen")}
                except ValueError:
                    alert_id, snapshot = None, None
                with open(a.out, "a") as f:
                    f.write(json.dumps({"key": self.headers.get("Idempotency-Key"), "id": alert_id,
                                        "snapshot": snapshot, "valid": valid, "refused": refuse}) + "\n")
            self.send_response(503 if refuse else (204 if valid else 401))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
