#!/usr/bin/env python3
"""An IoT Hub-style MQTT device for the MQTT integration tests, on a client nobody here wrote:
Debian's python3-paho-mqtt (1.6), over real TLS or WebSockets, trusting the relay's ca.pem.

It reports facts, one flat JSON object per line on stdout ({"event": ..., ...}); the C++ tests
(test_mqtt.cpp) decide what is right.

  device   connect (device SAS as password, or an X.509 certificate), subscribe to
           $iothub/streams/POST/# and $iothub/streams/res/#, answer each stream request 200 (and
           join the streaming endpoint, echoing every byte back) or 400; runs until the relay
           drops it or it is killed.
  connect  connect once and report the CONNACK (or that the connection was dropped).
  raw      TLS, then hand-made bytes (a CONNECT built here, hex chunks), then report every byte the
           relay sent back and when it closed.
"""
import argparse
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
import types
from urllib.parse import parse_qs, unquote, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wire_client  # noqa: E402  (its TLS + WebSocket client joins the streaming endpoint)

import paho.mqtt.client as mqtt  # noqa: E402

STREAMS_POST = "$iothub/streams/POST/"
out_lock = threading.Lock()


def emit(event, **fields):
    d = {"event": event}
    d.update(fields)
    with out_lock:
        sys.stdout.write(json.dumps(d, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def user_name(a):
    return "%s/%s/?api-version=2021-04-12&DeviceClientType=paho-mqtt%%2F1.6" % (a.host_name, a.user_device or a.device_id)


def make_client(a):
    c = mqtt.Client(client_id=a.client_id or a.device_id, clean_session=True, protocol=mqtt.MQTTv311,
                    transport="websockets" if a.websocket else "tcp")
    if a.websocket:
        c.ws_set_options(path="/$iothub/websocket")
    c.tls_set(ca_certs=a.ca, certfile=a.cert, keyfile=a.key)
    c.username_pw_set(user_name(a), a.sas if a.sas else None)
    return c


def parse_request(topic):
    rest = topic[len(STREAMS_POST):]
    name, _, query = rest.partition("/?")
    q = parse_qs(query, keep_blank_values=True)
    return unquote(name), q.get("$rid", [""])[0], q.get("$url", [""])[0], q.get("$auth", [""])[0]


def echo_stream(a, url, token, rid):
    """Joins the streaming endpoint with the device's token and echoes until the stream ends."""
    u = urlsplit(url)
    opts = types.SimpleNamespace(address="127.0.0.1", port=u.port, ca=a.ca, server_name=u.hostname,
                                 host_header=u.netloc)
    try:
        conn = wire_client.Conn(opts)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        conn.send_request("GET", u.path, ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: " + key,
                                          "Sec-WebSocket-Version: 13", "Authorization: Bearer " + token])
        status, _, body = conn.read_response(10)
        emit("joined", rid=rid, status=status, body=body.decode("utf-8", "replace"))
        if status != 101:
            conn.close()
            return
        echoed = 0
        while True:
            m = conn.ws_message(time.monotonic() + 120)
            if m[0] == "close":
                emit("stream_closed", rid=rid, code=m[1], echoed=echoed)
                break
            conn.ws_send(0x2, m[1])  # an empty message (end of stream) is echoed too
            echoed += len(m[1])
        conn.close()
    except (wire_client.Closed, TimeoutError, OSError, ssl.SSLError, ValueError) as e:
        emit("stream_error", rid=rid, error="%s: %s" % (type(e).__name__, e))


def run_device(a):
    c = make_client(a)
    state = {"done": False}

    def on_connect(client, userdata, flags, rc):
        emit("connack", rc=rc)
        if rc == 0:
            client.subscribe([(STREAMS_POST + "#", 0), ("$iothub/streams/res/#", 0)] +
                             [(t, 0) for t in a.also_subscribe])

    def on_subscribe(client, userdata, mid, granted):
        emit("suback", granted=",".join(str(g) for g in granted))

    def on_message(client, userdata, msg):
        if not msg.topic.startswith(STREAMS_POST):
            emit("message", topic=msg.topic)
            return
        name, rid, url, token = parse_request(msg.topic)
        emit("request", topic=msg.topic, name=name, rid=rid, url=url, token_len=len(token), qos=msg.qos,
             payload_len=len(msg.payload))
        if a.answer == "accept":
            client.publish("$iothub/streams/res/200/?$rid=" + rid, b"", qos=a.answer_qos)
            threading.Thread(target=echo_stream, args=(a, url, token, rid), daemon=True).start()
        elif a.answer == "reject":
            client.publish("$iothub/streams/res/400/?$rid=" + rid, a.reject_payload.encode(), qos=a.answer_qos)
        emit("answered", rid=rid, answer=a.answer)

    def on_disconnect(client, userdata, rc):
        emit("disconnected", rc=rc)
        state["done"] = True

    c.on_connect, c.on_subscribe, c.on_message, c.on_disconnect = on_connect, on_subscribe, on_message, on_disconnect
    try:
        c.connect("127.0.0.1", a.port, keepalive=a.keepalive)
    except (OSError, ssl.SSLError) as e:
        emit("connect_failed", error=str(e))
        return
    published = False
    while not state["done"]:
        if c.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS and not state["done"]:
            emit("disconnected", rc=-1)
            break
        if not published and a.publish and c.is_connected():
            published = True
            for topic in a.publish:
                c.publish(topic, b"{}", qos=1)
                emit("published", topic=topic)


def run_connect(a):
    c = make_client(a)
    result = {}
    c.on_connect = lambda client, userdata, flags, rc: result.setdefault("rc", rc)
    c.on_disconnect = lambda client, userdata, rc: result.setdefault("dropped", rc)
    try:
        c.connect("127.0.0.1", a.port, keepalive=a.keepalive)
    except (OSError, ssl.SSLError) as e:
        emit("connect_failed", error=str(e))
        return
    deadline = time.monotonic() + a.wait
    while time.monotonic() < deadline and "rc" not in result and "dropped" not in result:
        if c.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
            break
    if "rc" in result:
        emit("connack", rc=result["rc"])
    else:
        emit("no_connack", dropped=result.get("dropped", -1))
    c.disconnect()


# -- raw packets, built here from the standard (not with the relay's codec) ---------------------

def mqtt_string(s):
    b = s.encode("utf-8") if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def remaining_length(n):
    out = b""
    while True:
        d, n = n % 128, n // 128
        out += bytes([d | (0x80 if n else 0)])
        if not n:
            return out


def connect_packet(client_id, user, password, keepalive):
    flags = 0x02 | (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
    body = mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + mqtt_string(client_id)
    if user is not None:
        body += mqtt_string(user)
    if password is not None:
        body += mqtt_string(password)
    return bytes([0x10]) + remaining_length(len(body)) + body


def run_raw(a):
    ctx = ssl.create_default_context(cafile=a.ca)
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", a.port), timeout=a.wait)
    sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    chunks = []
    if a.connect_device:
        chunks.append(connect_packet(a.connect_device, user_name(a) if a.sas else None, a.sas, a.keepalive))
    chunks += [bytes.fromhex(h) for h in a.hex]
    if a.pad:
        chunks.append(os.urandom(a.pad))
    sent_ok = True
    for ch in chunks:
        try:
            sock.sendall(ch)
        except (OSError, ssl.SSLError):
            sent_ok = False
            break
    received = b""
    how = "timed out"
    deadline = time.monotonic() + a.wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            break
        except (OSError, ssl.SSLError) as e:
            how = "recv: %s" % e
            break
        if not data:
            how = "EOF"
            break
        received += data
    emit("raw", closed=how != "timed out", how=how, received_hex=received.hex(), sent=sent_ok,
         after=round(time.monotonic() - started, 3))
    sock.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--host-name", required=True, help="the relay's HostName, as in connection strings")
    p.add_argument("--device-id", required=True)
    p.add_argument("--client-id", help="default: the device id")
    p.add_argument("--user-device", help="device named in the user name (default: the device id)")
    p.add_argument("--sas", help="the password: a device SAS token")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--websocket", action="store_true", help="MQTT over WebSockets at /$iothub/websocket")
    p.add_argument("--keepalive", type=int, default=60)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("device")
    d.add_argument("--answer", choices=["accept", "reject", "none"], default="accept")
    d.add_argument("--answer-qos", type=int, default=0)
    d.add_argument("--reject-payload", default="")
    d.add_argument("--also-subscribe", action="append", default=[])
    d.add_argument("--publish", action="append", default=[], help="topics to PUBLISH {} to at QoS 1 once connected")
    c = sub.add_parser("connect")
    c.add_argument("--wait", type=float, default=10)
    r = sub.add_parser("raw")
    r.add_argument("--connect-device", help="send a CONNECT for this client id first (with --sas as password)")
    r.add_argument("--hex", action="append", default=[])
    r.add_argument("--pad", type=int, default=0, help="then this many random bytes")
    r.add_argument("--wait", type=float, default=10)
    a = p.parse_args()
    {"device": run_device, "connect": run_connect, "raw": run_raw}[a.command](a)


if __name__ == "__main__":
    main()
