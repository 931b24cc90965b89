#!/usr/bin/env python3
"""Drives headless Chromium over the Chrome DevTools Protocol to watch the relay's status page.

Python stdlib only: the WebSocket framing is wire_client.py's (imported from beside this file).
One page is loaded once and never reloaded; the script reports what it sees as lines on stdout,
which the C++ test (test_status_page.cpp) reads to know when to act:

  PAGE-LOADED offline      the page rendered and lists DEVICE as offline
  DEVICE-ONLINE            the same page now lists DEVICE as online (the test started it)
  STREAM-SHOWN             the same page lists a live stream of DEVICE (the test opened one)
  STREAM-BYTES <text>      its row shows that byte count (with --stream-bytes-text)
  SAME-PAGE                a marker set right after the load is still there (no reload happened)
  SCREENSHOT <path>        the PNG written
  FAIL <reason>            anything that went wrong (exit code 1)

Usage: status_page_check.py --chromium BIN --url URL --device ID --stream-name NAME
                            --screenshot PNG --user-data-dir DIR [--timeout S]
"""
import argparse
import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire_client  # noqa: E402  (Conn: raw HTTP/1.1 + WebSocket client)


def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


class Fail(Exception):
    pass


class Options:
    """What wire_client.Conn reads from its options object."""

    def __init__(self, port):
        self.address = "127.0.0.1"
        self.port = port
        self.host_header = "127.0.0.1:%d" % port


class DevTools:
    """One CDP session on a page target's WebSocket."""

    def __init__(self, port, ws_path, deadline):
        self.conn = wire_client.Conn(Options(port), use_tls=False)
        key = base64.b64encode(os.urandom(16)).decode()
        self.conn.send_request("GET", ws_path, ["Upgrade: websocket", "Connection: Upgrade",
                                                "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"])
        status, _, _ = self.conn.read_response(max(1.0, deadline - time.monotonic()))
        if status != 101:
            raise Fail("DevTools WebSocket upgrade answered %d" % status)
        self.next_id = 0

    def call(self, method, params=None, timeout=15.0):
        self.next_id += 1
        my_id = self.next_id
        self.conn.ws_send(0x1, json.dumps({"id": my_id, "method": method, "params": params or {}}).encode())
        deadline = time.monotonic() + timeout
        while True:
            m = self.conn.ws_message(deadline)
            if m[0] == "close":
                raise Fail("DevTools closed the WebSocket: %r" % (m,))
            reply = json.loads(m[1])
            if reply.get("id") != my_id:
                continue  # an event
            if "error" in reply:
                raise Fail("%s: %s" % (method, reply["error"]))
            return reply.get("result", {})

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise Fail("evaluate %r threw: %s" % (expression, r["exceptionDetails"]))
        return r.get("result", {}).get("value")


def start_chromium(a):
    argv = [a.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--user-data-dir=" + a.user_data_dir, "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            "--window-size=1280,860", "about:blank"]
    log = open(os.path.join(a.user_data_dir, "chromium.log"), "wb")
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def devtools_port(a, browser, deadline):
    path = os.path.join(a.user_data_dir, "DevToolsActivePort")
    while time.monotonic() < deadline:
        if browser.poll() is not None:
            raise Fail("chromium exited with %s (log: %s/chromium.log)" % (browser.returncode, a.user_data_dir))
        try:
            with open(path) as f:
                lines = f.read().split("\n")
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise Fail("no DevToolsActivePort in %s" % a.user_data_dir)


def page_target(port, deadline):
    while time.monotonic() < deadline:
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=5) as r:
            targets = json.load(r)
        for t in targets:
            if t.get("type") == "page" and "webSocketDebuggerUrl" in t:
                return re.sub(r"^ws://[^/]+", "", t["webSocketDebuggerUrl"])
        time.sleep(0.1)
    raise Fail("chromium shows no page target")


def wait_text(dev, what, predicate, deadline):
    """Polls document.body.innerText until predicate(text) holds; the last text on failure."""
    text = ""
    while time.monotonic() < deadline:
        text = dev.evaluate("document.body ? document.body.innerText : ''") or ""
        if predicate(text):
            return text
        time.sleep(0.2)
    raise Fail("timed out waiting for %s; the page says:\n%s" % (what, text))


def device_state(text, device):
    """'online' / 'offline' / None for DEVICE's row in the Devices table (the part after its heading)."""
    part = text.split("\nDevices\n", 1)[1] if "\nDevices\n" in text else ""
    for line in part.split("\n"):
        cells = [c.strip() for c in line.split("\t")]
        if cells and cells[0] == device and len(cells) > 1:
            return cells[1].split(" ")[0]
    return None


def stream_shown(text, device, stream_name, with_text=None):
    """A row of the Live streams table (between its heading and the Devices heading) for DEVICE
    (and holding with_text when given)."""
    if "Live streams" not in text or "\nDevices\n" not in text:
        return False
    part = text.split("Live streams", 1)[1].split("\nDevices\n", 1)[0]
    for line in part.split("\n"):
        cells = [c.strip() for c in line.split("\t")]
        if len(cells) >= 3 and cells[0] == device and cells[1] == stream_name:
            if with_text is None or with_text in cells:
                return True
    return False


def run(a):
    deadline = time.monotonic() + a.timeout
    browser = start_chromium(a)
    try:
        port = devtools_port(a, browser, deadline)
        dev = DevTools(port, page_target(port, deadline), deadline)
        dev.call("Page.enable")
        dev.call("Page.navigate", {"url": a.url})
        wait_text(dev, "the device listed offline", lambda t: device_state(t, a.device) == "offline", deadline)
        dev.evaluate("window.__sgSamePage = 'kept'; 1")
        say("PAGE-LOADED", "offline")
        wait_text(dev, "the device going online", lambda t: device_state(t, a.device) == "online", deadline)
        say("DEVICE-ONLINE")
        text = wait_text(dev, "the stream row", lambda t: stream_shown(t, a.device, a.stream_name), deadline)
        say("STREAM-SHOWN")
        if a.stream_bytes_text:
            text = wait_text(dev, "the stream's bytes (%s)" % a.stream_bytes_text,
                             lambda t: stream_shown(t, a.device, a.stream_name, a.stream_bytes_text), deadline)
            say("STREAM-BYTES", a.stream_bytes_text)
        if dev.evaluate("window.__sgSamePage || ''") != "kept":
            raise Fail("the page was reloaded (the marker set after loading is gone)")
        say("SAME-PAGE")
        shot = dev.call("Page.captureScreenshot", {"format": "png"})
        os.makedirs(os.path.dirname(os.path.abspath(a.screenshot)), exist_ok=True)
        with open(a.screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        say("SCREENSHOT", os.path.abspath(a.screenshot))
        for line in text.split("\n"):
            say("TEXT", line)
        return 0
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--chromium", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--stream-name", required=True)
    p.add_argument("--stream-bytes-text", help="wait until the stream row shows this byte count, e.g. '64.0 KiB'")
    p.add_argument("--screenshot", required=True)
    p.add_argument("--user-data-dir", required=True)
    p.add_argument("--timeout", type=float, default=45)
    a = p.parse_args()
    try:
        sys.exit(run(a))
    except (Fail, wire_client.Closed, TimeoutError, OSError) as e:
        say("FAIL", str(e).replace("\n", "\n     "))
        sys.exit(1)


if __name__ == "__main__":
    main()
