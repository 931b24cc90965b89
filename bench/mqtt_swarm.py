#!/usr/bin/env python3
"""Idle IoT Hub-style MQTT devices for the benchmark (row 5, MQTT column).

  mqtt_swarm.py --port MQTT_PORT --host-name HOST:PORT --ca ca.pem --count N --prefix swarm- --key BASE64

Opens N MQTT 3.1.1 connections over TLS (asyncio, at most --parallel handshakes at once), each a
device {prefix}{i} authenticated with a SAS token signed with --key (the devices must exist with
that key: `sg_device_swarm create` registers them), CONNECT + SUBSCRIBE $iothub/streams/POST/#
as the Azure IoT SDKs do, keep-alive 240 s (PINGREQ every 200 s). Prints {"event":"connected",...}
when all are up, holds them until SIGTERM/SIGINT, then {"event":"released",...}. Packets are built
here from the standard (python3 stdlib only).
"""
import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import signal
import ssl
import struct
import sys
import time
import urllib.parse


def sas(resource, key, expiry):
    sr = urllib.parse.quote(resource.lower(), safe="").lower()
    sig = base64.b64encode(hmac.new(base64.b64decode(key), (sr + "\n" + str(expiry)).encode(), hashlib.sha256).digest())
    return "SharedAccessSignature sr=%s&sig=%s&se=%d" % (sr, urllib.parse.quote(sig.decode(), safe=""), expiry)


def string(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def packet(first, body):
    n, length = len(body), b""
    while True:
        d, n = n % 128, n // 128
        length += bytes([d | (0x80 if n else 0)])
        if not n:
            break
    return bytes([first]) + length + body


async def read_packet(reader):
    first = (await reader.readexactly(1))[0]
    n, mult = 0, 1
    for _ in range(4):
        d = (await reader.readexactly(1))[0]
        n += (d & 0x7F) * mult
        mult *= 128
        if not d & 0x80:
            break
    return first >> 4, await reader.readexactly(n)


async def device(a, i, ctx, gate, conns, latencies, failures):
    dev = "%s%d" % (a.prefix, i)
    for attempt in range(3):
        async with gate:
            t0 = time.monotonic()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", a.port, ssl=ctx, server_hostname="127.0.0.1"), 60)
                user = "%s/%s/?api-version=2021-04-12" % (a.host_name, dev)
                body = string("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 240) + string(dev) + string(user) + \
                    string(sas("%s/devices/%s" % (a.host_name, dev), a.key, int(time.time()) + 86400))
                writer.write(packet(0x10, body))
                kind, ack = await asyncio.wait_for(read_packet(reader), 60)
                if kind != 2 or ack[1] != 0:
                    raise RuntimeError("CONNACK %s" % ack.hex())
                writer.write(packet(0x82, struct.pack("!H", 1) + string("$iothub/streams/POST/#") + b"\x00"))
                kind, _ = await asyncio.wait_for(read_packet(reader), 60)
                if kind != 9:
                    raise RuntimeError("no SUBACK")
                latencies.append((time.monotonic() - t0) * 1000)
                conns.append((reader, writer))
                return
            except (OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.IncompleteReadError, RuntimeError) as e:
                last = str(e)
    failures.append(last)


async def keepalive(conns, stop):
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 200)
        except asyncio.TimeoutError:
            for _, w in conns:
                w.write(b"\xc0\x00")


async def main_async(a):
    ctx = ssl.create_default_context(cafile=a.ca)
    gate = asyncio.Semaphore(a.parallel)
    conns, latencies, failures = [], [], []
    t0 = time.monotonic()
    await asyncio.gather(*(device(a, i, ctx, gate, conns, latencies, failures) for i in range(a.count)))
    elapsed = time.monotonic() - t0
    latencies.sort()
    p50 = latencies[len(latencies) // 2] if latencies else None
    print(json.dumps({"event": "connected", "protocol": "mqtt", "requested": a.count, "connected": len(conns),
                      "failed": len(failures), "seconds": round(elapsed, 2),
                      "per_second": round(len(conns) / elapsed, 1) if elapsed else None,
                      "connect_p50_ms": round(p50, 1) if p50 else None,
                      "first_error": failures[0] if failures else None}, separators=(",", ":")), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await keepalive(conns, stop)
    for _, w in conns:
        w.close()
    print(json.dumps({"event": "released", "connections": len(conns)}, separators=(",", ":")), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True, help="the relay's --mqtt-listen port")
    p.add_argument("--host-name", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--prefix", default="swarm-")
    p.add_argument("--key", required=True)
    p.add_argument("--parallel", type=int, default=64)
    a = p.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main_async(a))


if __name__ == "__main__":
    sys.exit(main())
