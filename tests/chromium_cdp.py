#!/usr/bin/python3
"""Drive headless Chromium over the DevTools protocol (--remote-debugging-pipe,
no extra package) for the status page test of tests/tests/http.rs.

usage: chromium_cdp.py URL NODE SHOT_BEFORE SHOT_AFTER

Loads URL, prints {"rows": [[id, state], ...]} of the node table as one JSON
line and saves a screenshot to SHOT_BEFORE; then waits for a line on stdin
(the test killed NODE meanwhile), polls the same page (no reload) for up to
15 s until NODE's row reads "failed", saves SHOT_AFTER and prints the final
{"rows": ..., "updated": ..., "reloaded": bool} line.
"""
import base64
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time


class Browser:
    def __init__(self, profile):
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()

        def fds():
            # Out of the way first, so that neither lands on the other's target.
            r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking",
             "--remote-debugging-pipe", "--window-size=900,700",
             "--user-data-dir=" + profile, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=fds, close_fds=False)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.w = os.fdopen(to_chrome_w, "wb", buffering=0)
        self.r = os.fdopen(from_chrome_r, "rb", buffering=0)
        self.buf = b""
        self.next_id = 0
        self.session = None

    def send(self, method, params=None, session=True):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        self.w.write(json.dumps(msg).encode() + b"\0")
        while True:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def read(self):
        while b"\0" not in self.buf:
            chunk = self.r.read(65536)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def open(self, url):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        att = self.send("Target.attachToTarget",
                        {"targetId": target["targetId"], "flatten": True}, session=False)
        self.session = att["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Page.navigate", {"url": url})
        deadline = time.time() + 15
        while self.eval("document.readyState") != "complete":
            if time.time() > deadline:
                raise RuntimeError("the page did not load")
            time.sleep(0.1)

    def eval(self, expr):
        res = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True})
        return res.get("result", {}).get("value")

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.send("Browser.close", session=False)
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


ROWS = """Array.from(document.querySelectorAll('#nodes tbody tr')).map(
    tr => Array.from(tr.querySelectorAll('td')).map(td => td.textContent))"""


def main():
    url, node, before, after = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    with tempfile.TemporaryDirectory() as profile:
        b = Browser(profile)
        try:
            b.open(url)
            # A marker that a reload would wipe.
            b.eval("window.krgTestMarker = 1")
            b.screenshot(before)
            print(json.dumps({"rows": b.eval(ROWS)}), flush=True)
            sys.stdin.readline()
            deadline = time.time() + 15
            rows = []
            while time.time() < deadline:
                rows = b.eval(ROWS)
                if any(r[0] == node and r[1] == "failed" for r in rows):
                    break
                time.sleep(0.2)
            b.screenshot(after)
            print(json.dumps({
                "rows": rows,
                "updated": b.eval("document.getElementById('updated').textContent"),
                "reloaded": b.eval("window.krgTestMarker") != 1,
            }), flush=True)
        finally:
            b.close()


if __name__ == "__main__":
    main()
