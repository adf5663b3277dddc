#!/usr/bin/env python3
"""Drives headless Chromium over the DevTools protocol on a pipe (standard library only).

    browser.py URL SCRIPT...

Opens URL, waits for its load event, then evaluates each SCRIPT in the page in turn
(promises awaited) and prints each value as one JSON line. A script that throws, or a
browser that does not answer within the time limit, exits non-zero with the reason.
The tests use it to click in the dashboard as an analyst does.
"""
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

LIMIT_S = 90


class Pipe:
    """Messages are JSON texts, each ended by a NUL byte, as Chromium's pipe expects."""

    def __init__(self, to_browser, from_browser):
        self.out, self.inp, self.buf, self.next_id = to_browser, from_browser, b"", 0

    def call(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.out, json.dumps(msg).encode() + b"\0")
        while True:
            m = self.read()
            if m.get("id") == self.next_id:
                if "error" in m:
                    sys.exit(f"{method}: {m['error']}")
                return m["result"]

    def wait_event(self, method):
        while True:
            if self.read().get("method") == method:
                return

    def read(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.inp, 65536)
            if not chunk:
                sys.exit("the browser closed its pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)


def main():
    url, scripts = sys.argv[1], sys.argv[2:]
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(f"no answer within {LIMIT_S} s"))
    signal.alarm(LIMIT_S)
    cmd_r, cmd_w = os.pipe()
    res_r, res_w = os.pipe()

    def on_fds_3_and_4():
        # Chromium reads commands on fd 3 and writes answers on fd 4. Move both ends
        # out of the way first, so neither dup2 closes the other.
        a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
        b = fcntl.fcntl(res_w, fcntl.F_DUPFD, 10)
        os.dup2(a, 3)
        os.dup2(b, 4)

    profile = tempfile.mkdtemp(prefix="wattchdog-browser-")
    browser = subprocess.Popen(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu",
            "--remote-debugging-pipe", f"--user-data-dir={profile}",
            "--window-size=1280,900", "about:blank",
        ],
        preexec_fn=on_fds_3_and_4, close_fds=False,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(cmd_r)
    os.close(res_w)
    try:
        cdp = Pipe(cmd_w, res_r)
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        cdp.call("Page.enable", session=session)
        cdp.call("Page.navigate", {"url": url}, session=session)
        cdp.wait_event("Page.loadEventFired")
        for script in scripts:
            r = cdp.call(
                "Runtime.evaluate",
                {"expression": script, "awaitPromise": True, "returnByValue": True},
                session=session,
            )
            if "exceptionDetails" in r:
                d = r["exceptionDetails"]
                sys.exit(f"script failed: {d.get('exception', {}).get('description') or d.get('text')}")
            print(json.dumps(r["result"].get("value")), flush=True)
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
