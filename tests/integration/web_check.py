#!/usr/bin/env python3
"""Drives headless Chromium over the DevTools protocol against streamgate-web (test_web.cpp).

A real browser logs in, lists devices, opens SSH terminals through the gateway, types into
xterm.js and reads its buffer back; plain HTTP requests check the refusals a browser page cannot
make on purpose. Each check prints `OK <name>` (the C++ test requires every one) or
`FAIL <name>: <reason>` and exits 1. Python stdlib only; the CDP client is status_page_check.py's.
"""
import argparse
import base64
import http.client
import json
import os
import random
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import status_page_check as cdp  # noqa: E402  (DevTools, start_chromium, devtools_port, page_target)


def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


class Fail(Exception):
    pass


def js(value):
    return json.dumps(value)


class Page:
    def __init__(self, dev, deadline):
        self.dev = dev
        self.deadline = deadline

    def eval(self, expr):
        return self.dev.evaluate(expr)

    def wait(self, what, expr, timeout=20.0):
        end = min(self.deadline, time.monotonic() + timeout)
        value = None
        while time.monotonic() < end:
            # The page may still be loading: a missing element is "not yet", not a failure.
            value = self.eval("(function(){try{return (%s);}catch(e){return null;}})()" % expr)
            if value:
                return value
            time.sleep(0.1)
        raise Fail("timed out waiting for %s (last value %r); the page says:\n%s"
                   % (what, value, self.eval("document.body ? document.body.innerText : ''")))

    def type(self, text):
        for ch in text:
            if ch == "\n":
                key = {"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13}
                self.dev.call("Input.dispatchKeyEvent", dict(key, type="keyDown", text="\r", unmodifiedText="\r"))
                self.dev.call("Input.dispatchKeyEvent", dict(key, type="keyUp"))
            else:
                self.dev.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": ch, "text": ch, "unmodifiedText": ch})
                self.dev.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": ch})

    def screenshot(self, path):
        # The whole page, not only the viewport: every terminal panel is in the picture.
        size = self.dev.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000), "scale": 1}
        shot = self.dev.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        say("SCREENSHOT", path)

    def lines(self, index):
        return self.eval("sgScreenLines(sgTerminals[%d].term)" % index) or []

    def wait_line(self, what, index, wanted, timeout=20.0):
        """Waits until terminal `index` shows a line that is exactly `wanted` (trimmed)."""
        return self.wait(what, "sgScreenLines(sgTerminals[%d].term).some(function(l){return l.trim() === %s;})"
                         % (index, js(wanted)), timeout)

    def open_terminal(self, device, ssh_user, password="", key=""):
        n = self.eval("sgTerminals.length")
        self.eval("askCredentials(%s); $('ssh-user').value = %s; $('ssh-password').value = %s; $('ssh-key').value = %s;"
                  "$('connect-button').click(); 1" % (js(device), js(ssh_user), js(password), js(key)))
        self.wait("terminal %d to exist" % n, "sgTerminals.length > %d" % n)
        return n

    def focus(self, index):
        self.eval("sgTerminals[%d].term.focus(); 1" % index)


class Http:
    """Plain HTTP requests to the gateway, with one cookie jar entry."""

    def __init__(self, port):
        self.port = port
        self.cookie = ""
        self.csrf = ""

    def request(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        h = dict(headers or {})
        if self.cookie:
            h["Cookie"] = self.cookie
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        text = r.read().decode("utf-8", "replace")
        set_cookie = r.getheader("Set-Cookie")
        if set_cookie and set_cookie.startswith("sg_session="):
            self.cookie = set_cookie.split(";", 1)[0]
        c.close()
        return r.status, text, set_cookie

    def login(self, user, password):
        status, text, cookie = self.request("POST", "/api/login", {"user": user, "password": password})
        if status == 200:
            self.csrf = json.loads(text)["csrf"]
        return status, text, cookie

    def upgrade(self, path):
        """A WebSocket upgrade request; returns the status line and body of the answer."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nCookie: %s\r\n\r\n"
                   % (path, self.port, key, self.cookie)).encode())
        data = b""
        while b"\r\n\r\n" not in data or (b"Content-Length" in data and not data.endswith(b"}")):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        head, _, body = data.decode("utf-8", "replace").partition("\r\n\r\n")
        return head.split("\r\n", 1)[0], body


def check(name, cond, detail=""):
    if not cond:
        raise Fail("%s: %s" % (name, detail))
    say("OK", name)


def browser_checks(a, page):
    key = open(a.ssh_key_file).read()
    # Log in through the form.
    page.dev.call("Page.navigate", {"url": a.url + "/"})
    page.wait("the login form", "!document.getElementById('login').hidden")
    page.eval("$('login-user').value = %s; $('login-password').value = %s; $('login-button').click(); 1"
              % (js(a.user), js(a.password)))
    page.wait("the device list", "!document.getElementById('app').hidden && "
              "document.querySelectorAll('#devices tbody tr').length > 0")
    check("login", True)
    rows = page.wait("the online device", "(function(){var m={};document.querySelectorAll('#devices tbody tr')"
                     ".forEach(function(r){m[r.dataset.device]=r.cells[1].textContent;});"
                     "return m[%s]==='online' ? m : null;})()" % js(a.device))
    check("device-list-online", rows.get(a.device) == "online", repr(rows))
    check("device-list-offline", rows.get(a.offline_device) == "offline", repr(rows))
    check("device-list-hides-other", a.hidden_device not in rows, repr(rows))

    # Terminal 1: the private key pasted into the form.
    t1 = page.open_terminal(a.device, a.ssh_user, key=key)
    page.wait("terminal 1 connected", "sgTerminals[%d].phase === 'connected'" % t1, 30)
    fp = page.eval("sgTerminals[%d].fingerprint" % t1)
    check("host-key-shown", fp == "ssh-ed25519 " + a.host_fingerprint, "%r vs %r" % (fp, a.host_fingerprint))
    token = "hello-%08x" % random.getrandbits(32)
    page.focus(t1)
    page.type("echo " + token + "\n")
    page.wait_line("the echo in terminal 1", t1, token)
    check("terminal-echo", True)

    # Resize the terminal: the PTY follows.
    page.eval("sgTerminals[%d].term.resize(100, 30); 1" % t1)
    page.focus(t1)
    page.type("stty size\n")
    page.wait_line("stty size 30 100", t1, "30 100")
    check("terminal-resize", True)

    # Terminal 2 at the same time, its own stream.
    t2 = page.open_terminal(a.device, a.ssh_user, key=key)
    page.wait("terminal 2 connected", "sgTerminals[%d].phase === 'connected'" % t2, 30)
    token2 = "second-%08x" % random.getrandbits(32)
    page.focus(t2)
    page.type("echo " + token2 + "\n")
    page.wait_line("the echo in terminal 2", t2, token2)
    token3 = "again-%08x" % random.getrandbits(32)
    page.focus(t1)
    page.type("echo " + token3 + "\n")
    page.wait_line("terminal 1 still answering", t1, token3)
    check("second-terminal", page.eval("sgTerminals[%d].phase" % t1) == "connected")
    page.screenshot(os.path.join(a.artifacts, "web-terminals.png"))

    # Refusals, each in its own terminal panel, the others untouched.
    def refused(name, device, expect, password="", use_key=""):
        t = page.open_terminal(device, a.ssh_user, password=password, key=use_key)
        page.wait(name + " closed", "sgTerminals[%d].phase === 'closed' && sgTerminals[%d].message" % (t, t), 40)
        msg = page.eval("sgTerminals[%d].message" % t)
        shown = page.eval("sgTerminals[%d].status.textContent" % t)
        check(name, expect in msg and expect in shown, "message %r, shown %r" % (msg, shown))
        say("MESSAGE", name, msg)

    refused("wrong-ssh-password", a.device, "SSH authentication failed", password="wrong-password")
    refused("device-offline", a.offline_device, "offline (404103 DeviceNotOnline)", use_key=key)
    refused("device-rejected", a.rejecting_device, "device %s rejected the stream: " % a.rejecting_device, use_key=key)
    refused("host-key-changed", a.changed_device, "HOST KEY CHANGED", use_key=key)
    refused("device-forbidden", a.hidden_device, "may not reach device " + a.hidden_device + " (HTTP 403)", use_key=key)
    page.focus(t1)
    token4 = "still-%08x" % random.getrandbits(32)
    page.type("echo " + token4 + "\n")
    page.wait_line("terminal 1 after the refusals", t1, token4)
    check("others-unaffected", page.eval("sgTerminals[%d].phase" % t2) == "connected")
    page.screenshot(os.path.join(a.artifacts, "web-refusals.png"))

    # End terminal 1 from its shell: the session is audited and its recording replays.
    session = page.eval("sgTerminals[%d].session" % t1)
    page.focus(t1)
    page.type("exit\n")
    page.wait("terminal 1 closed", "sgTerminals[%d].phase === 'closed'" % t1, 20)
    check("terminal-exit", page.eval("sgTerminals[%d].message" % t1) == "ok", page.eval("sgTerminals[%d].message" % t1))
    say("SESSION", session, token)
    page.dev.call("Page.navigate", {"url": a.url + "/replay?id=" + session})
    page.wait("the replay", "window.sgReplay && window.sgReplay.done", 30)
    text = page.eval("sgScreenLines(sgReplay.term).join('\\n')")
    check("replay", token in text and "30 100" in text, text[-500:])
    page.screenshot(os.path.join(a.artifacts, "web-replay.png"))

    # Logging out (here without the page closing its terminals first) ends the open terminals.
    page.dev.call("Page.navigate", {"url": a.url + "/"})
    page.wait("the device list again", "!document.getElementById('app').hidden && "
              "document.querySelectorAll('#devices tbody tr').length > 0")
    t = page.open_terminal(a.device, a.ssh_user, key=key)
    page.wait("the last terminal connected", "sgTerminals[%d].phase === 'connected'" % t, 30)
    page.eval("api('POST', '/api/logout', {}); 1")
    page.wait("the terminal ended by the logout", "sgTerminals[%d].phase === 'closed'" % t, 10)
    msg = page.eval("sgTerminals[%d].message" % t)
    check("logout-ends-terminals", "web session ended" in msg, msg)


def http_checks(a):
    h = Http(a.port)
    status, text, _ = h.login("nobody", "whatever-password")
    check("unknown-web-user", status == 401 and "wrong user name or password" in text, "%d %s" % (status, text))
    status, text, _ = h.login(a.user, "not-" + a.password)
    check("wrong-web-password", status == 401 and "wrong user name or password" in text, "%d %s" % (status, text))

    b = Http(a.port)
    status, text, cookie = b.login(a.user2, a.password2)
    check("second-user-login", status == 200 and "HttpOnly" in cookie and "SameSite=Strict" in cookie, "%d %s" % (status, cookie))
    status, text, _ = b.request("POST", "/api/logout", {})
    check("missing-csrf", status == 403 and "CSRF" in text, "%d %s" % (status, text))
    status, text, _ = b.request("POST", "/api/logout", {}, {"X-CSRF-Token": "x" + b.csrf})
    check("wrong-csrf", status == 403 and "CSRF" in text, "%d %s" % (status, text))
    line, body = b.upgrade("/api/terminal?device=%s" % a.device)
    check("terminal-without-csrf", " 403 " in line and "CSRF" in body, line + " " + body)
    line, body = b.upgrade("/api/terminal?device=%s&csrf=%s" % (a.hidden_device, b.csrf))
    check("terminal-forbidden-device", " 403 " in line and "may not reach device " + a.hidden_device in body,
          line + " " + body)
    status, text, _ = b.request("GET", "/api/recordings")
    check("recordings-admin-only", status == 403 and "admin" in text, "%d %s" % (status, text))
    status, text, _ = b.request("GET", "/api/me")
    check("session-unaffected", status == 200 and json.loads(text)["user"] == a.user2, "%d %s" % (status, text))
    status, text, _ = b.request("GET", "/api/devices")
    ids = [d["id"] for d in json.loads(text)] if status == 200 else []
    check("device-list-filtered", a.device in ids and a.hidden_device not in ids, "%d %s" % (status, text))
    status, text, _ = b.request("POST", "/api/logout", {}, {"X-CSRF-Token": b.csrf})
    check("logout", status == 200, "%d %s" % (status, text))
    status, text, _ = b.request("GET", "/api/me")
    check("logged-out", status == 401, "%d %s" % (status, text))

    # Rate limit: a user name with too many failures waits, even with the right password.
    r = Http(a.port)
    for _ in range(5):
        r.login(a.user2, "bad-password")
    status, text, _ = r.login(a.user2, a.password2)
    check("login-rate-limit", status == 429 and "too many failed logins" in text, "%d %s" % (status, text))


def run(a):
    deadline = time.monotonic() + a.timeout
    http_checks(a)
    browser = cdp.start_chromium(a)
    try:
        port = cdp.devtools_port(a, browser, deadline)
        dev = cdp.DevTools(port, cdp.page_target(port, deadline), deadline)
        dev.call("Page.enable")
        browser_checks(a, Page(dev, deadline))
        say("DONE")
        return 0
    finally:
        browser.terminate()
        try:
            browser.wait(10)
        except Exception:
            browser.kill()
            browser.wait()


def main():
    p = argparse.ArgumentParser()
    for name in ["chromium", "url", "user", "password", "user2", "password2", "device", "offline-device",
                 "hidden-device", "changed-device", "rejecting-device", "ssh-user", "ssh-key-file", "host-fingerprint", "artifacts",
                 "user-data-dir"]:
        p.add_argument("--" + name, required=True)
    p.add_argument("--timeout", type=float, default=150)
    a = p.parse_args()
    a.port = int(a.url.rsplit(":", 1)[1])
    try:
        sys.exit(run(a))
    except (Fail, cdp.Fail, OSError, TimeoutError) as e:
        say("FAIL", str(e).replace("\n", "\n     "))
        sys.exit(1)


if __name__ == "__main__":
    main()
