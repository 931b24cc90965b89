#!/usr/bin/env python3
"""streamgate-web figures (issue 12; docs/BENCHMARKS.md, "Web terminal").

  bench/web_terminal.py [--build-dir build] [--keystrokes 300] [--terminals 50] [--out FILE]

Starts on 127.0.0.1, in a temporary directory: a relay, a private sshd, a device proxy in front of
it, and streamgate-web. Then
  1. keystroke echo latency: headless Chromium logs in through the page and opens a terminal;
     a script in the page sends one keystroke at a time on the terminal's WebSocket (as xterm's
     onData does) and times until the echoed byte comes back: browser -> gateway -> relay ->
     device proxy -> sshd/pty -> back. p50/p99 over --keystrokes.
  2. memory per terminal: --terminals terminals opened at once from a WebSocket client (each its
     own stream and SSH session, each with its shell), the gateway's RSS before and after.
Prints the figures and writes them as JSON (--out). Every process it starts is stopped on exit.
"""
import argparse
import base64
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import status_page_check as cdp  # noqa: E402
import wire_client  # noqa: E402

procs = []


def start(name, argv, work, stdin=None):
    log = open(os.path.join(work, name + ".log"), "wb")
    p = subprocess.Popen(argv, stdin=stdin or subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    procs.append(p)
    return p


def wait_log(work, name, pattern, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(pattern, open(os.path.join(work, name + ".log"), errors="replace").read())
        if m:
            return m
        time.sleep(0.05)
    raise RuntimeError("%s never logged %r" % (name, pattern))


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Opts:
    def __init__(self, port):
        self.address, self.port, self.host_header = "127.0.0.1", port, "127.0.0.1:%d" % port


def login(port, user, password):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    c.request("POST", "/api/login", body=json.dumps({"user": user, "password": password}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    body = json.loads(r.read())
    return r.getheader("Set-Cookie").split(";", 1)[0], body["csrf"]


def open_ws_terminal(port, cookie, csrf, device, ssh_user, key):
    conn = wire_client.Conn(Opts(port), use_tls=False, timeout=30)
    conn.send_request("GET", "/api/terminal?device=%s&csrf=%s" % (device, csrf),
                      ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                       "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(), "Cookie: " + cookie])
    status, _, _ = conn.read_response(30)
    if status != 101:
        raise RuntimeError("terminal upgrade answered %d" % status)
    conn.ws_send(0x1, json.dumps({"user": ssh_user, "key": key, "cols": 80, "rows": 24}).encode())
    deadline = time.monotonic() + 60
    while True:
        m = conn.ws_message(deadline)
        if m[0] == "text":
            status = json.loads(m[1])
            if status["phase"] == "connected":
                return conn
            if status["phase"] == "closed":
                raise RuntimeError("terminal closed: " + status["message"])
        elif m[0] == "close":
            raise RuntimeError("terminal closed")


LATENCY_JS = r"""
(async function (n) {
  var t = sgTerminals[0], ws = t.ws, enc = new TextEncoder(), out = [];
  var waiting = null, seen = '';
  var previous = ws.onmessage;
  ws.onmessage = function (ev) {
    previous(ev);
    if (typeof ev.data === 'string' || !waiting) return;
    seen += new TextDecoder().decode(ev.data);
    if (seen.indexOf(waiting.ch) >= 0) { var w = waiting; waiting = null; w.resolve(performance.now()); }
  };
  function key(ch) {
    return new Promise(function (resolve) {
      seen = ''; waiting = { ch: ch, resolve: resolve };
      var t0 = performance.now();
      ws.send(enc.encode(ch));
      waiting.t0 = t0;
    });
  }
  for (var i = 0; i < n; i++) {
    var ch = String.fromCharCode(97 + (i %% 26));
    var t0 = performance.now();
    var t1 = await key(ch);
    out.push(t1 - t0);
    if (i %% 40 === 39) { ws.send(enc.encode('\x15')); await new Promise(function (r) { setTimeout(r, 50); }); }
  }
  ws.onmessage = previous;
  return out;
})(%d)
"""


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--keystrokes", type=int, default=300)
    ap.add_argument("--terminals", type=int, default=50)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "web-terminal.json"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args()
    b = os.path.abspath(a.build_dir)
    work = tempfile.mkdtemp(prefix="sg-bench-web-")
    try:
        relay_port, ssh_port = free_port(), free_port()
        data = os.path.join(work, "sg")
        relay = [b + "/relay/streamgate-relay", "--data-dir", data]
        start("relay", relay + ["--listen", "127.0.0.1:%d" % relay_port, "--admin-listen", "off"], work)
        wait_log(work, "relay", r"event=Listening")
        dev = subprocess.check_output(relay + ["device-identity", "create", "--device-id", "bench-1"], text=True).strip()
        svc = subprocess.check_output(relay + ["show-connection-string", "--policy-name", "service"], text=True).strip()
        reg = subprocess.check_output(relay + ["show-connection-string", "--policy-name", "registryRead"], text=True).strip()
        for k in ("host", "user"):
            subprocess.check_call(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(work, k)])
        with open(os.path.join(work, "sshd_config"), "w") as f:
            f.write("ListenAddress 127.0.0.1\nPort %d\nHostKey %s/host\nAuthorizedKeysFile %s/user.pub\n"
                    "PidFile %s/sshd.pid\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nPermitRootLogin yes\nUseDNS no\nPrintMotd no\n"
                    "PrintLastLog no\nMaxStartups 200\n" % (ssh_port, work, work, work))
        os.makedirs("/run/sshd", exist_ok=True)
        start("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", os.path.join(work, "sshd_config")], work)
        wait_log(work, "sshd", r"Server listening")
        start("device-proxy", [b + "/device-proxy/streamgate-device-proxy", "--ca-file", data + "/ca.pem", dev,
                               "--service", "ssh=127.0.0.1:%d" % ssh_port], work)
        wait_log(work, "device-proxy", r"connected to relay")
        users = os.path.join(work, "users.toml")
        subprocess.run([b + "/web/streamgate-web", "add-user", "--users", users, "--name", "bench", "--devices", "*"],
                       input="bench-password\n", text=True, check=True, stdout=subprocess.DEVNULL)
        web = start("web", [b + "/web/streamgate-web", "--listen", "127.0.0.1:0", "--users", users,
                            "--recordings", work + "/rec", "--data-dir", work + "/web", "--connection-string", svc,
                            "--registry-connection-string", reg, "--ca-file", data + "/ca.pem",
                            "--max-terminals", str(a.terminals + 10)], work)
        port = int(wait_log(work, "web", r"event=WebListening address=127\.0\.0\.1:(\d+)").group(1))
        key = open(os.path.join(work, "user")).read()
        ssh_user = os.environ.get("USER") or "root"
        import pwd
        ssh_user = pwd.getpwuid(os.geteuid()).pw_name

        # 1. Keystroke echo latency from a real browser.
        class CA:  # what cdp.start_chromium reads
            chromium, user_data_dir = a.chromium, os.path.join(work, "chromium")
        os.makedirs(CA.user_data_dir)
        browser = subprocess.Popen([a.chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                    "--user-data-dir=" + CA.user_data_dir, "--remote-debugging-port=0",
                                    "--remote-debugging-address=127.0.0.1", "--window-size=1280,860", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(browser)
        deadline = time.monotonic() + 120
        dport = cdp.devtools_port(CA, browser, deadline)
        dev_tools = cdp.DevTools(dport, cdp.page_target(dport, deadline), deadline)
        dev_tools.call("Page.enable")
        dev_tools.call("Page.navigate", {"url": "http://127.0.0.1:%d/" % port})

        def wait_js(expr, timeout=30):
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if dev_tools.evaluate("(function(){try{return (%s);}catch(e){return null;}})()" % expr):
                    return
                time.sleep(0.1)
            raise RuntimeError("timed out waiting for " + expr)

        wait_js("!document.getElementById('login').hidden")
        dev_tools.evaluate("$('login-user').value='bench'; $('login-password').value='bench-password';"
                           "$('login-button').click(); 1")
        wait_js("document.querySelectorAll('#devices tbody tr').length > 0")
        dev_tools.evaluate("askCredentials('bench-1'); $('ssh-user').value=%s; $('ssh-key').value=%s;"
                           "$('connect-button').click(); 1" % (json.dumps(ssh_user), json.dumps(key)))
        wait_js("sgTerminals.length && sgTerminals[0].phase === 'connected'")
        time.sleep(1.0)  # let the shell print its prompt before timing keystrokes
        r = dev_tools.call("Runtime.evaluate", {"expression": LATENCY_JS % a.keystrokes, "awaitPromise": True,
                                                "returnByValue": True}, timeout=300)
        lat = r["result"]["value"]
        browser.terminate()
        browser.wait(10)

        # 2. Memory per terminal.
        cookie, csrf = login(port, "bench", "bench-password")
        time.sleep(0.5)
        before = rss_kib(web.pid)
        conns = []
        t0 = time.monotonic()
        for _ in range(a.terminals):
            conns.append(open_ws_terminal(port, cookie, csrf, "bench-1", ssh_user, key))
        opened_s = time.monotonic() - t0
        time.sleep(1.0)
        after = rss_kib(web.pid)
        for c in conns:
            c.close()

        result = {
            "keystrokes": len(lat),
            "echo_latency_ms": {"p50": round(percentile(lat, 50), 3), "p99": round(percentile(lat, 99), 3),
                                "mean": round(statistics.mean(lat), 3), "max": round(max(lat), 3)},
            "terminals": a.terminals,
            "gateway_rss_kib": {"before": before, "after": after},
            "rss_per_terminal_kib": round((after - before) / a.terminals, 1),
            "open_terminals_s": round(opened_s, 2),
        }
        print(json.dumps(result, indent=2))
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
