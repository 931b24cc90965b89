#!/usr/bin/env python3
"""A raw, deliberately unhelpful client for the security integration tests.

It speaks TLS, HTTP/1.1 and WebSocket to the relay by hand (Python stdlib only), so the tests can
send what the product's own clients never would: expired or malformed tokens, forged paths,
text and oversized frames, garbage control messages, half a ClientHello, random bytes...

It reports facts, one flat JSON object per line on stdout ({"label": ..., "event": ..., ...});
the C++ tests decide what is right. Nested values are flattened: response headers become
"h.<lower-case name>", fields of a JSON body or message "j.<name>".

Usage:  wire_client.py --port P --ca CA.pem [--address 127.0.0.1] [--server-name 127.0.0.1] COMMAND ...

Commands:
  script JSON      run a list of steps (see run_script) on named connections
  burst            many requests over a few keep-alive connections, summarised
  tls-probe        one TLS handshake (optionally from --source, limited versions/ciphers)
  stall-tls        send the first bytes of a ClientHello, then wait for the relay to hang up
  random           send random bytes over plain TCP, then wait for the relay to hang up
"""
import argparse
import base64
import json
import os
import socket
import ssl
import struct
import sys
import time
import warnings
from urllib.parse import urlsplit

warnings.filterwarnings("ignore", category=DeprecationWarning)  # TLS 1.0/1.1 are offered on purpose


def emit(label, event, **fields):
    d = {"label": label, "event": event}
    d.update(fields)
    sys.stdout.write(json.dumps(d, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Closed(Exception):
    pass


def client_context(opts, min_version=None, max_version=None, ciphers=None):
    ctx = ssl.create_default_context(cafile=opts.ca)
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    if ciphers:
        ctx.set_ciphers(ciphers)
    return ctx


def tls_version(text):
    return {
        "1.0": ssl.TLSVersion.TLSv1,
        "1.1": ssl.TLSVersion.TLSv1_1,
        "1.2": ssl.TLSVersion.TLSv1_2,
        "1.3": ssl.TLSVersion.TLSv1_3,
    }[text]


def tcp_connect(opts, source=None, timeout=10.0):
    src = (source, 0) if source else None
    s = socket.create_connection((opts.address, opts.port), timeout=timeout, source_address=src)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Conn:
    def __init__(self, opts, source=None, use_tls=True, timeout=10.0):
        self.opts = opts
        sock = tcp_connect(opts, source, timeout)
        if use_tls:
            sock = client_context(opts).wrap_socket(sock, server_hostname=opts.server_name)
        self.sock = sock
        self.local_port = sock.getsockname()[1]
        self.buf = b""
        self.fragments = None
        self.fragment_opcode = None

    # -- bytes ---------------------------------------------------------------------------------
    def send(self, data):
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as e:
            raise Closed("send: " + str(e))

    def fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            raise TimeoutError("timed out")
        except (OSError, ssl.SSLError) as e:
            raise Closed("recv: " + str(e))
        if not chunk:
            raise Closed("EOF")
        self.buf += chunk

    def read_until(self, marker, deadline):
        while marker not in self.buf:
            self.fill(deadline)
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            self.fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- HTTP ----------------------------------------------------------------------------------
    def send_request(self, method, path, headers, body=b"", host=None):
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % (host or self.opts.host_header)]
        lines += headers
        if body or method in ("POST", "PUT"):
            lines.append("Content-Length: %d" % len(body))
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def read_response(self, timeout):
        deadline = time.monotonic() + timeout
        head = self.read_until(b"\r\n\r\n", deadline).decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                k = k.strip().lower()
                headers[k] = (headers[k] + ", " if k in headers else "") + v.strip()
        body = b""
        if status != 101 and "content-length" in headers:
            body = self.read_exact(int(headers["content-length"]), deadline)
        return status, headers, body

    # -- WebSocket -----------------------------------------------------------------------------
    def ws_send(self, opcode, payload, fin=True):
        n = len(payload)
        b0 = (0x80 if fin else 0) | opcode
        if n < 126:
            hdr = bytes([b0, 0x80 | n])
        elif n < 65536:
            hdr = bytes([b0, 0x80 | 126]) + struct.pack("!H", n)
        else:
            hdr = bytes([b0, 0x80 | 127]) + struct.pack("!Q", n)
        key = os.urandom(4)
        if n:
            mask = (key * (n // 4 + 1))[:n]
            masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
        else:
            masked = b""
        self.send(hdr + key + masked)

    def ws_frame(self, deadline):
        b0, b1 = self.read_exact(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.read_exact(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.read_exact(8, deadline))[0]
        key = self.read_exact(4, deadline) if b1 & 0x80 else None
        payload = self.read_exact(n, deadline)
        if key and n:
            mask = (key * (n // 4 + 1))[:n]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def ws_message(self, deadline):
        """('text'|'binary', bytes) or ('close', code, reason); answers pings."""
        while True:
            fin, opcode, payload = self.ws_frame(deadline)
            if opcode == 0x9:
                self.ws_send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                reason = payload[2:].decode("utf-8", "replace")
                try:
                    self.ws_send(0x8, payload[:2])
                except Closed:
                    pass
                return ("close", code, reason)
            if opcode in (0x1, 0x2):
                self.fragments, self.fragment_opcode = [payload], opcode
            elif opcode == 0x0 and self.fragments is not None:
                self.fragments.append(payload)
            if fin and self.fragments is not None:
                data, op = b"".join(self.fragments), self.fragment_opcode
                self.fragments = None
                return ("text" if op == 0x1 else "binary", data)


# ---------------------------------------------------------------------------------------------
# script


class Missing(Exception):
    pass


def substitute(value, variables):
    if isinstance(value, str):
        out, i = "", 0
        while True:
            j = value.find("${", i)
            if j < 0:
                return out + value[i:]
            k = value.index("}", j)
            name = value[j + 2:k]
            if name not in variables:
                raise Missing("no variable " + name)
            out += value[i:j] + str(variables[name])
            i = k + 1
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    return value


def save_url(variables, prefix, url):
    """Remembers the parts of a wss://host/bridges/{hub}/{device}/{streamId} URL."""
    path = urlsplit(url).path
    variables[prefix + ".path"] = path
    parts = path.split("/")
    if len(parts) == 5 and parts[1] == "bridges":
        variables[prefix + ".hub"] = parts[2]
        variables[prefix + ".device"] = parts[3]
        variables[prefix + ".stream"] = parts[4]


def flatten_json(prefix, text):
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {prefix + k: v for k, v in value.items() if isinstance(v, (str, int, float, bool)) or v is None}


def payload_of(step):
    if "size" in step:
        return os.urandom(int(step["size"]))
    if "hex" in step:
        return bytes.fromhex(step["hex"])
    return step.get("data", "").encode("utf-8")


def report_response(label, variables, status, headers, body):
    fields = {"status": status, "body": body[:4000].decode("utf-8", "replace")}
    for k, v in headers.items():
        fields["h." + k] = v
    fields.update(flatten_json("j.", body))
    for k, v in fields.items():
        variables[label + "." + k] = v
    if "h.iothub-streaming-url" in fields:
        save_url(variables, label + ".url", fields["h.iothub-streaming-url"])
    emit(label, "response", **fields)


def report_message(label, variables, m):
    if m[0] == "close":
        emit(label, "close", code=m[1], reason=m[2])
        return
    kind, data = m
    fields = {"opcode": kind, "size": len(data)}
    if kind == "text":
        text = data.decode("utf-8", "replace")
        fields["data"] = text[:4000]
        j = flatten_json("j.", data)
        fields.update(j)
        for k, v in j.items():
            variables[label + "." + k] = v
        if isinstance(j.get("j.url"), str):
            save_url(variables, label + ".url", j["j.url"])
    else:
        fields["data_hex"] = data[:64].hex()
    for k, v in fields.items():
        variables[label + "." + k] = v
    emit(label, "message", **fields)


def wait_closed(conn, timeout):
    started = time.monotonic()
    deadline = started + timeout
    received = len(conn.buf)
    conn.buf = b""
    while True:
        try:
            conn.fill(deadline)
            received += len(conn.buf)
            conn.buf = b""
        except TimeoutError:
            return False, "timed out", time.monotonic() - started, received
        except Closed as e:
            return True, str(e), time.monotonic() - started, received


def run_script(opts, steps):
    """Steps (dicts) run in order; every string may use ${label.field} from earlier results.

    {"op":"connect","conn":C[,"source":IP][,"tls":false]}
    {"op":"request","conn":C,"method":M,"path":P[,"headers":[..]][,"body":S][,"pad_header_bytes":N][,"read":false]}
    {"op":"read_response","conn":C[,"timeout":S]}
    {"op":"upgrade","conn":C,"path":P[,"headers":[..]]}        WebSocket handshake; 101 or the error
    {"op":"ws_send","conn":C,"type":"text|binary|close|ping",("data":S|"hex":H|"size":N)[,"code":N]}
    {"op":"ws_recv","conn":C[,"timeout":S][,"skip_binary":true]} one message, a close, EOF or timeout
    {"op":"ws_quiet","conn":C,"seconds":S}                      nothing but pings for S seconds?
    {"op":"raw_send","conn":C,("data":S|"hex":H|"size":N)}
    {"op":"wait_closed","conn":C[,"timeout":S]}
    {"op":"wait_connected","device":ID,"token":SAS}  poll GET /devices/ID until Connected
    {"op":"close","conn":C}     {"op":"sleep","seconds":S}
    Every step may have "label" (default: the op) under which its events and variables appear.
    """
    conns = {}
    variables = {}
    for step in steps:
        label = step.get("label", step.get("op"))
        try:
            step = substitute(step, variables)
        except Missing as e:
            emit(label, "skipped", error=str(e))
            continue
        op = step["op"]
        name = step.get("conn", "c")
        timeout = float(step.get("timeout", 10))
        try:
            if op == "connect":
                conns[name] = Conn(opts, step.get("source"), step.get("tls", True), timeout)
                emit(label, "connected", local_port=conns[name].local_port)
            elif op == "request":
                headers = list(step.get("headers", []))
                pad = int(step.get("pad_header_bytes", 0))
                i = 0
                while pad > 0:
                    chunk = min(pad, 1000)
                    headers.append("X-Pad-%d: %s" % (i, "p" * chunk))
                    pad -= chunk
                    i += 1
                conn = conns[name]
                try:
                    conn.send_request(step.get("method", "GET"), step["path"], headers,
                                      step.get("body", "").encode("utf-8"))
                except Closed as e:
                    emit(label, "send_failed", error=str(e))
                if step.get("read", True):
                    report_response(label, variables, *conn.read_response(timeout))
            elif op == "read_response":
                report_response(label, variables, *conns[name].read_response(timeout))
            elif op == "upgrade":
                conn = conns[name]
                key = base64.b64encode(os.urandom(16)).decode()
                headers = ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: " + key,
                           "Sec-WebSocket-Version: 13"] + list(step.get("headers", []))
                conn.send_request("GET", step["path"], headers)
                report_response(label, variables, *conn.read_response(timeout))
            elif op == "ws_send":
                kind = step.get("type", "binary")
                conn = conns[name]
                if kind == "close":
                    conn.ws_send(0x8, struct.pack("!H", int(step.get("code", 1000))))
                else:
                    opcode = {"text": 0x1, "binary": 0x2, "ping": 0x9}[kind]
                    conn.ws_send(opcode, payload_of(step))
                emit(label, "sent")
            elif op == "ws_recv":
                conn = conns[name]
                deadline = time.monotonic() + timeout
                while True:
                    m = conn.ws_message(deadline)
                    if not (step.get("skip_binary") and m[0] == "binary"):
                        break
                report_message(label, variables, m)
            elif op == "ws_quiet":
                conn = conns[name]
                try:
                    m = conn.ws_message(time.monotonic() + float(step["seconds"]))
                    report_message(label, variables, m)
                except TimeoutError:
                    emit(label, "quiet")
            elif op == "raw_send":
                conns[name].send(payload_of(step))
                emit(label, "sent")
            elif op == "wait_closed":
                closed, how, after, received = wait_closed(conns[name], timeout)
                emit(label, "closed" if closed else "timeout", how=how, after=round(after, 3), received=received)
            elif op == "close":
                conns.pop(name).close()
                emit(label, "done")
            elif op == "wait_connected":
                # The relay answers 101 before it registers the control connection: poll the
                # registry (GET /devices/{id}) until it says Connected.
                deadline = time.monotonic() + timeout
                state = ""
                while time.monotonic() < deadline:
                    c = Conn(opts)
                    try:
                        c.send_request("GET", "/devices/" + step["device"], ["Authorization: " + step["token"]])
                        status, _, body = c.read_response(max(0.1, deadline - time.monotonic()))
                        state = flatten_json("", body).get("connectionState", "HTTP %d" % status)
                    finally:
                        c.close()
                    if state == "Connected":
                        break
                    time.sleep(0.02)
                emit(label, "state", state=state)
            elif op == "sleep":
                time.sleep(float(step["seconds"]))
                emit(label, "done")
            else:
                emit(label, "error", error="unknown op " + op)
        except TimeoutError:
            emit(label, "timeout")
        except Closed as e:
            emit(label, "closed", how=str(e))
        except (OSError, ssl.SSLError, ValueError, KeyError, IndexError) as e:
            emit(label, "error", error="%s: %s" % (type(e).__name__, e))
    for c in conns.values():
        c.close()


# ---------------------------------------------------------------------------------------------
# burst


def run_burst(opts, a):
    statuses, codes, reconnects, failures = {}, {}, 0, 0
    started = time.monotonic()
    per_conn = (a.count + a.connections - 1) // a.connections
    sent = 0
    headers = a.header or []
    for _ in range(a.connections):
        conn = None
        for _ in range(per_conn):
            if sent >= a.count:
                break
            sent += 1
            try:
                if conn is None:
                    conn = Conn(opts)
                    reconnects += 1
                conn.send_request(a.method, a.path, headers)
                status, h, body = conn.read_response(10)
                statuses[status] = statuses.get(status, 0) + 1
                code = flatten_json("", body).get("errorCode")
                codes[code] = codes.get(code, 0) + 1
                if h.get("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (TimeoutError, Closed, OSError, ssl.SSLError, ValueError, IndexError):
                failures += 1
                if conn:
                    conn.close()
                conn = None
        if conn:
            conn.close()
    summary = lambda d: ",".join("%s:%d" % (k, v) for k, v in sorted(d.items(), key=lambda kv: str(kv[0])))
    emit("burst", "burst", sent=sent, statuses=summary(statuses), codes=summary(codes), failures=failures,
         connections=reconnects, elapsed=round(time.monotonic() - started, 3))


# ---------------------------------------------------------------------------------------------
# TLS level


def client_hello(opts, ctx):
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=opts.server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return obj, incoming, outgoing


def run_tls_probe(opts, a):
    """A TLS handshake through memory BIOs, counting the bytes the relay sent back."""
    ctx = client_context(opts, tls_version(a.min_version) if a.min_version else None,
                         tls_version(a.max_version) if a.max_version else None, a.ciphers)
    if a.min_version in ("1.0", "1.1"):
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    try:
        sock = tcp_connect(opts, a.source, a.timeout)
    except OSError as e:
        emit("probe", "connect_failed", error=str(e))
        return
    obj, incoming, outgoing = client_hello(opts, ctx)
    received, deadline, error, ok = 0, time.monotonic() + a.timeout, "", False
    try:
        while True:
            data = outgoing.read()
            if data:
                sock.sendall(data)
            try:
                obj.do_handshake()
                data = outgoing.read()
                if data:
                    sock.sendall(data)
                ok = True
                break
            except ssl.SSLWantReadError:
                pass
            data = outgoing.read()
            if data:
                sock.sendall(data)
            left = deadline - time.monotonic()
            if left <= 0:
                error = "timed out"
                break
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                error = "EOF"
                break
            received += len(chunk)
            incoming.write(chunk)
    except (socket.timeout, TimeoutError):
        error = "timed out"
    except ssl.SSLError as e:
        error = "ssl: " + str(e)
    except OSError as e:
        error = "os: " + str(e)
    fields = {"ok": ok, "received": received, "error": error, "local_port": sock.getsockname()[1]}
    if ok:
        fields["version"] = obj.version()
        fields["cipher"] = obj.cipher()[0]
        fields["compression"] = obj.compression() or ""
    sock.close()
    emit("probe", "probe", **fields)


def run_stall_tls(opts, a):
    _, _, outgoing = client_hello(opts, client_context(opts))
    hello = outgoing.read()
    sock = tcp_connect(opts, None, a.wait)
    sock.sendall(hello[: a.send_bytes])
    conn = Conn.__new__(Conn)
    conn.sock, conn.buf = sock, b""
    closed, how, after, received = wait_closed(conn, a.wait)
    emit("stall", "closed" if closed else "timeout", how=how, after=round(after, 3), received=received,
         sent=min(a.send_bytes, len(hello)), hello_size=len(hello), local_port=sock.getsockname()[1])
    sock.close()


def run_random(opts, a):
    sock = tcp_connect(opts, None, a.wait)
    local_port = sock.getsockname()[1]
    conn = Conn.__new__(Conn)
    conn.sock, conn.buf = sock, b""
    try:
        sock.sendall(os.urandom(a.size))
        sent = "ok"
    except OSError as e:
        sent = str(e)
    closed, how, after, received = wait_closed(conn, a.wait)
    emit("random", "closed" if closed else "timeout", how=how, after=round(after, 3), received=received, send=sent,
         local_port=local_port)
    sock.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--server-name", default="127.0.0.1")
    p.add_argument("--host-header", default=None)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("script")
    s.add_argument("steps")
    b = sub.add_parser("burst")
    b.add_argument("--method", default="POST")
    b.add_argument("--path", required=True)
    b.add_argument("-H", "--header", action="append")
    b.add_argument("--count", type=int, default=1000)
    b.add_argument("--connections", type=int, default=10)
    t = sub.add_parser("tls-probe")
    t.add_argument("--source")
    t.add_argument("--min-version")
    t.add_argument("--max-version")
    t.add_argument("--ciphers")
    t.add_argument("--timeout", type=float, default=5)
    st = sub.add_parser("stall-tls")
    st.add_argument("--send-bytes", type=int, default=40)
    st.add_argument("--wait", type=float, default=10)
    r = sub.add_parser("random")
    r.add_argument("--size", type=int, default=4096)
    r.add_argument("--wait", type=float, default=10)
    a = p.parse_args()
    if a.host_header is None:
        a.host_header = "%s:%d" % (a.server_name, a.port)
    if a.command == "script":
        run_script(a, json.loads(a.steps))
    elif a.command == "burst":
        run_burst(a, a)
    elif a.command == "tls-probe":
        run_tls_probe(a, a)
    elif a.command == "stall-tls":
        run_stall_tls(a, a)
    elif a.command == "random":
        run_random(a, a)


if __name__ == "__main__":
    main()
