#!/usr/bin/env python3
"""Writes the hand-made seed inputs into fuzz/corpus/<target>/seed-*.

Inputs that still crash a target because of a known bug are kept out of these lists: they are
in fuzz/crashes/<target>/ (see the README there) until the bug is fixed.
Run once when seeds change (python3 fuzz/seeds.py); the files are committed, together with the
inputs libFuzzer added to the corpus (-merge=1), whose names are SHA-1 hashes.
SAS tokens are really signed, the way common/sas_token.cpp does it, with the key the fuzz
target verifies against, so the fuzzer starts from tokens that pass the signature check.
"""
import base64
import hashlib
import hmac
import os
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ_KEY = base64.b64encode(b"Streamgate fuzzing key, 32 bytes").decode()   # as in fuzz_sas_token.cpp
OTHER_KEY = base64.b64encode(b"another key, not the fuzzing one").decode()
DEVICE_KEY = FUZZ_KEY


def url_encode(text, lower_hex=False):
    """common/crypto.cpp url_encode: everything outside [A-Za-z0-9-_.~] as %XX."""
    out = []
    for b in text.encode() if isinstance(text, str) else text:
        c = chr(b)
        if c.isascii() and (c.isalnum() or c in "-_.~"):
            out.append(c)
        else:
            out.append(("%%%02x" if lower_hex else "%%%02X") % b)
    return "".join(out)


def sas_token(resource, key=FUZZ_KEY, skn="", se=1893456000, escape_sig=True, prefix=True, upper_sr_hex=False):
    sr = url_encode(resource.lower(), lower_hex=not upper_sr_hex)
    se = str(se)
    mac = hmac.new(base64.b64decode(key), (sr + "\n" + se).encode(), hashlib.sha256).digest()
    sig = base64.b64encode(mac).decode()
    token = "sr=%s&sig=%s&se=%s" % (sr, url_encode(sig) if escape_sig else sig, se)
    if skn:
        token += "&skn=" + url_encode(skn)
    return ("SharedAccessSignature " + token) if prefix else token


def connection_strings():
    k = DEVICE_KEY
    valid = [
        f"HostName=relay.example.com;DeviceId=dev1;SharedAccessKey={k}",
        f"HostName=relay.example.com:8443;DeviceId=dev1;SharedAccessKey={k}",
        f"HostName=[::1]:8443;DeviceId=dev-1.a+b%c_d#e*f?g!h(i)j,k:l=m@n$o;SharedAccessKey={k}",
        f"HostName=[fe80::1];DeviceId=d;SharedAccessKey={k}",
        f"HostName=127.0.0.1:1;DeviceId=d;SharedAccessKey={k}",
        f"HostName=relay.example.com;SharedAccessKeyName=service;SharedAccessKey={k}",
        f"HostName=relay.example.com;SharedAccessKeyName=registryReadWrite;SharedAccessKey={k};",
        "HostName=relay.example.com;DeviceId=cert-device;x509=true",
        f"HostName=relay.example.com;DeviceId=dev1;SharedAccessKey={k};x509=false",
        f"HostName=relay.example.com;DeviceId=dev1;SharedAccessKey={k};X509=TRUE",
        f"  hostname = relay.example.com ;; deviceid=dev1 ;sharedaccesskey= {k} ;\r\n",
        f"HOSTNAME=h;DEVICEID=d;SHAREDACCESSKEY={k}",
        "HostName=h;DeviceId=" + "d" * 128 + ";SharedAccessKey=AAAA",
        "HostName=h;DeviceId=d;SharedAccessKey=AA==",
    ]
    invalid = [
        "", ";", ";;;", "HostName", "=", "HostName=", "HostName=h",
        f"DeviceId=dev1;SharedAccessKey={k}",
        f"HostName=h;DeviceId=d;SharedAccessKeyName=s;SharedAccessKey={k}",
        f"HostName=h;SharedAccessKey={k}",
        f"HostName=h;DeviceId=d;SharedAccessKey={k};Foo=bar",
        f"HostName=h;HostName=h;DeviceId=d;SharedAccessKey={k}",
        "HostName=h;DeviceId=d;SharedAccessKey=",
        "HostName=h;DeviceId=d;SharedAccessKey=not+base64/at all!",
        "HostName=h;DeviceId=d;SharedAccessKey=AB+/=A==",
        "HostName=h;DeviceId=d;SharedAccessKey=AB==",
        "HostName=h;DeviceId=d",
        f"HostName=h:0;DeviceId=d;SharedAccessKey={k}",
        f"HostName=h:65536;DeviceId=d;SharedAccessKey={k}",
        f"HostName=h:99999;DeviceId=d;SharedAccessKey={k}",
        f"HostName=h:123456;DeviceId=d;SharedAccessKey={k}",
        f"HostName=h:;DeviceId=d;SharedAccessKey={k}",
        f"HostName=h:-1;DeviceId=d;SharedAccessKey={k}",
        f"HostName=https://h;DeviceId=d;SharedAccessKey={k}",
        f"HostName=user@h;DeviceId=d;SharedAccessKey={k}",
        f"HostName=::1;DeviceId=d;SharedAccessKey={k}",
        f"HostName=[::1;DeviceId=d;SharedAccessKey={k}",
        f"HostName=[];DeviceId=d;SharedAccessKey={k}",
        f"HostName=[::1]x;DeviceId=d;SharedAccessKey={k}",
        f"HostName=[g::1];DeviceId=d;SharedAccessKey={k}",
        f"HostName=:443;DeviceId=d;SharedAccessKey={k}",
        f"HostName=h h;DeviceId=d;SharedAccessKey={k}",
        f"HostName=h;DeviceId=a/b;SharedAccessKey={k}",
        f"HostName=h;DeviceId=..;SharedAccessKey={k}",
        f"HostName=h;DeviceId=.;SharedAccessKey={k}",
        f"HostName=h;DeviceId=d e;SharedAccessKey={k}",
        "HostName=h;DeviceId=" + "d" * 129 + f";SharedAccessKey={k}",
        f"HostName=h;DeviceId=d;SharedAccessKey={k};x509=maybe",
        f"HostName=h;SharedAccessKeyName=s;SharedAccessKey={k};x509=true",
        "HostName=h;SharedAccessKeyName=s;x509=false",
        "HostName=h;DeviceId=d;x509=false",
        "HostName=h;DeviceId=d;SharedAccessKey=secret+key/value;oops",
        "HostName=h;DeviceId=d;oops;SharedAccessKey=secret+key/value==",
        "HostName=h\x00;DeviceId=d;SharedAccessKey=AAAA",
        b"HostName=h;DeviceId=d\xff;SharedAccessKey=AAAA",
    ]
    return valid + invalid


def sas_tokens():
    host = "relay.example.com"
    tokens = [
        sas_token(f"{host}/devices/dev1"),
        sas_token(f"{host}/devices/dev1", prefix=False),
        sas_token(f"{host}/devices/dev1", escape_sig=False),
        sas_token(f"{host}", skn="service"),
        sas_token(f"{host}/twins/dev1/streams/ssh", skn="registry Read&Write"),
        sas_token(f"{host}/devices/Dev-1.A+B", se=0),
        sas_token(f"{host}/devices/dev1", se=1 << 40),
        sas_token(f"{host}/devices/dev1", key=OTHER_KEY),
        sas_token(f"{host}/devices/dev1", upper_sr_hex=True),
        sas_token(f"https://{host}/devices/%2F..%2Fx"),
        "  SharedAccessSignature \t" + sas_token(f"{host}/devices/dev1", prefix=False) + " \t",
    ]
    good = sas_token(f"{host}/devices/dev1", prefix=False)
    sr, sig, se = [f.split("=", 1)[1] for f in good.split("&")]
    bad = [
        "", " ", "SharedAccessSignature", "SharedAccessSignature ", "Bearer abc",
        "SharedAccessSignature sr=a", f"sr={sr}&sig={sig}", f"sr={sr}&se={se}", f"sig={sig}&se={se}",
        f"sr={sr}&sig={sig}&se={se}&sr={sr}", f"sr={sr}&sig={sig}&se={se}&skn=",
        f"sr={sr}&sig={sig}&se={se}&foo=bar", f"sr={sr}&sig={sig}&se={se}&", f"&sr={sr}&sig={sig}&se={se}",
        f"sr={sr}&sig={sig}&se=-1", f"sr={sr}&sig={sig}&se=12a", f"sr={sr}&sig={sig}&se=",
        f"sr={sr}&sig={sig}&se=99999999999999999999999", f"sr={sr}&sig={sig}&se=1099511627777",
        f"sr=%zz&sig={sig}&se={se}", f"sr={sr}%4&sig={sig}&se={se}", f"sr={sr}&sig=%2&se={se}",
        f"sr={sr}&sig=AAAA&se={se}", f"sr={sr}&sig=abc+def/ghi%3D&se={se}", f"sr={sr}&sig={sig}&se={se}&skn=%G0",
        f"sr={sr}&sig={sig}&se={se}\x7f", f"sr={sr} &sig={sig}&se={se}", f"sr={sr}&sig={sig}&se={se}&skn=a\u00e9",
        f"srr={sr}&sig={sig}&se={se}", "sr&sig&se", "SharedAccessSignature  sr=&sig=&se=",
        "SharedAccessSignature sr=" + "a" * 4100 + f"&sig={sig}&se={se}",
    ]
    covers = [
        "h/a/b\nh/a/b", "h/a/b\nh/a/b/c", "h/a/b\nh/a/bc", "h/a/b/\nh/a/b/c", "H/A/B\nh/a/b/C",
        "h/a\nh/a/../b", "h/./a\nh/./a/b", "h/a/..\nh/a/../x", "/\n/x", "\nx", "h\n", "a//\na//b",
        "relay.example.com/devices/dev1\nrelay.example.com/devices/dev1/streams",
        "relay.example.com\nrelay.example.com/twins/dev1/streams/ssh\nservice",
    ]
    return tokens + bad + covers


def control_messages():
    req = ('{"type":"streamRequest","requestId":"r-1","streamName":"ssh","streamId":"AbC-_9",'
           '"url":"wss://relay.example.com/bridges/hub/dev1/AbC-_9","authorizationToken":"tok_en-1"}')
    acc = '{"type":"streamResponse","requestId":"r-1","accepted":true}'
    rej = '{"type":"streamResponse","requestId":"r-1","accepted":false,"reason":"busy"}'
    msgs = [
        req, acc, rej,
        '{"type":"streamResponse","requestId":"r-1","accepted":false}',
        '{"type":"streamResponse","requestId":"r-1","accepted":"true"}',
        '{"type":"streamResponse","requestId":1,"accepted":true}',
        '{"type":"streamResponse","requestId":"r","accepted":false,"reason":"\\u0000\\ud83d\\ude00\\n"}',
        '{"type":"streamResponse","requestId":"r","accepted":false,"reason":"' + "\u00e9" * 700 + '"}',
        # found by these fuzzers, fixed since (in ddf6528): the type cut inside a UTF-8 sequence
        # in the error text that becomes a close reason
        '{"type":"x' + "\u00e9" * 40 + '","requestId":"r","accepted":true}',
        '{"type":"streamRequest","requestId":"\\u00e9","streamName":"","streamId":"","url":"","authorizationToken":""}',
        '{"type":"streamRequest","requestId":"r-1"}',
        '{"type":"streamRequest","type":"streamResponse","requestId":"r","accepted":true}',
        '{"type":"' + "\u00e9" * 40 + '","requestId":"r","accepted":true}',
        '{"type":"str\\u00e9amResponse"}', '{"type":7}', '{}', '[]', 'null', '"text"', '1e999', '',
        '{"a":' * 9 + '1' + '}' * 9, '{"a":' * 7 + '1' + '}' * 7,
        '{"type":"streamResponse","requestId":"r","accepted":true} trailing',
        '{"type":"streamResponse","requestId":"r","accepted":true,}',
        b'{"type":"streamResponse","requestId":"r\xff","accepted":true}',
        # kept connections: joins, opens and the relay's answers to an open
        '{"type":"join","path":"/bridges/hub/dev1/AbC-_9","authorization":"Bearer tok_en-1"}',
        '{"type":"join","path":"/bridges/hub/dev1/AbC-_9","authorization":"Bearer t","accept":"r-1"}',
        '{"type":"join","path":"/bridges/hub/dev1/AbC-_9","authorization":"Bearer t","accept":7}',
        '{"type":"join","path":1}',
        '{"type":"open","deviceId":"dev1","streamName":"ssh","authorization":"SharedAccessSignature sr=a&sig=b&se=1",'
        '"connectTimeout":5,"responseTimeout":300}',
        '{"type":"open","deviceId":"dev1","streamName":"ssh","authorization":"x","connectTimeout":0}',
        '{"type":"open","deviceId":"dev1","streamName":"ssh","authorization":"x","responseTimeout":1e3}',
        '{"type":"open","deviceId":7}',
        '{"type":"joined","streamId":"AbC-_9"}', '{"type":"rejected","reason":"' + "\u00e9" * 600 + '"}',
        '{"type":"error","errorCode":404103,"message":"device dev1 is not online"}',
        '{"type":"error","errorCode":4041030}', '{"type":"error"}',
        # error bodies
        '{"errorCode":404103,"message":"device dev1 is not online"}',
        '{"errorCode":-1,"message":"x"}',
        # errorCode 0 (or one wrapping to 0) gave an empty failure, taken for success (fixed in ddf6528)
        '{"errorCode":0,"message":""}', '{"errorCode":0}', '{"errorCode":4294967296}', '{"errorCode":-0}',
        '{"errorCode":99999,"message":"x"}', '{"errorCode":1000000,"message":"x"}',
        '{"errorCode":99999999999,"message":"x"}', '{"errorCode":"404103","message":"x"}',
        '{"errorCode":404103.5}', '{"message":"no code"}', 'Bad Gateway', '<html>502</html>',
        # close reasons
        '404103 DeviceNotOnline: device dev1 is not online', '400000 BadRequest: invalid control message: x',
        '123456 Error: a: b', '1234567', '12345 x', 'abcdef x', '000000 ', '999999 x',
        '\x00' + "\u00e9" * 80, '\x00x' + "\u00e9" * 60, b'\x01' + b'\x80' * 200, '\x05' + "x" * 110 + "\u20ac" * 5,
    ]
    out = list(msgs)
    for m in (req, acc, rej):
        out += [m[:n] for n in (1, len(m) // 2, len(m) - 1)]
    return out


def router_paths():
    enc_id = url_encode("dev-1.a+b%c_d#e*f?g!h(i)j,k:l=m@n$o")
    return [
        "/twins/dev1/streams/ssh", "/twins/dev1/streams/ssh?api-version=2020-09-30",
        "/devices/dev1/streams", "/devices/dev1", "/devices", "/devices/", "/bridges/hub_1/dev1/AbC-_9",
        f"/devices/{enc_id}/streams", f"/twins/{enc_id}/streams/{enc_id}", f"/bridges/h/{enc_id}/s",
        "/devices/a%2Fb/streams", "/devices/a%2fb", "/twins/..%2F..%2Fdevices/streams/x", "/devices/..",
        "/devices/.", "/devices/%2E%2E", "/devices/%2e", "/devices/a%00b",
        "/devices/%00", "/devices/%zz", "/devices/%4", "/devices/%", "/devices/%252F", "/devices/a b",
        "/devices/a%20b", "/devices/%C3%A9", "/devices/\u00e9", b"/devices/\xe9", "//devices/x", "/devices//streams",
        "/devices/dev1/streams/", "devices/dev1", "", "/", "*", "?", "/?a=b", "http://h/devices/x",
        "/bridges/hub/dev1", "/bridges/h%21/d/s", "/bridges/h/d/s%2F", "/bridges/" + "h" * 129 + "/d/s",
        "/twins/d/streams/" + "s" * 65, "/twins/d/streams/" + "s" * 64, "/devices/" + "d" * 128,
        "/devices/" + "d" * 129, "/devices/" + "%41" * 128, "/DEVICES/dev1", "/devices/dev1#frag",
        "/devices/" + "a" * 2040, "/devices/" + "a" * 2050, "/devices/x?" + "q" * 2048,
    ]


def mqtt_streams():
    """Byte streams a device might send the relay's MQTT endpoint (each a run of packets)."""
    import struct

    def string(x):
        b = x.encode() if isinstance(x, str) else x
        return struct.pack("!H", len(b)) + b

    def length(n):
        out = b""
        while True:
            d, n = n % 128, n // 128
            out += bytes([d | (0x80 if n else 0)])
            if not n:
                return out

    def packet(first, body):
        return bytes([first]) + length(len(body)) + body

    def connect(client_id, user=None, password=None, keepalive=60, flags=0x02, name="MQTT", level=4, will=None):
        f = flags | (0x80 if user is not None else 0) | (0x40 if password is not None else 0) | (0x04 if will else 0)
        body = string(name) + bytes([level, f]) + struct.pack("!H", keepalive) + string(client_id)
        if will:
            body += string(will[0]) + string(will[1])
        if user is not None:
            body += string(user)
        if password is not None:
            body += string(password)
        return packet(0x10, body)

    def subscribe(pid, *filters):
        return packet(0x82, struct.pack("!H", pid) + b"".join(string(t) + bytes([q]) for t, q in filters))

    def publish(topic, payload=b"", qos=0, pid=1):
        body = string(topic) + (struct.pack("!H", pid) if qos else b"") + payload
        return packet(0x30 | (qos << 1), body)

    host = "relay.example.com"
    user = host + "/dev1/?api-version=2021-04-12&DeviceClientType=iothubclient%2F1.11.0%20(native%3B%20Linux)"
    sas = sas_token(f"{host}/devices/dev1")
    hello = connect("dev1", user, sas, 240)
    subs = subscribe(1, ("$iothub/streams/POST/#", 0), ("$iothub/streams/res/#", 0))
    url = "wss%3A%2F%2Frelay.example.com%3A443%2Fbridges%2Fhub%2Fdev1%2Fabc"
    request = publish(f"$iothub/streams/POST/TestStream/?$rid=1f&$url={url}&$auth=tok")
    return [
        hello + subs + publish("$iothub/streams/res/200/?$rid=1f") + bytes([0xC0, 0]) + bytes([0xE0, 0]),
        hello + subs + publish("$iothub/streams/res/400/?$rid=1f", b"busy", qos=1, pid=7),
        connect("dev1", user, None, 0) + subs,                              # X.509: no password
        connect("dev1", "h/dev1/mod1/?api-version=1", sas),                 # a module
        connect("dev1", "h/dev1", sas, will=("devices/dev1/messages/events/", "gone")),
        connect("dev1", user, sas, name="MQIsdp", level=3),                 # MQTT 3.1
        connect("dev1", user, sas, flags=0x03),                             # reserved flag
        connect("dev1", None, sas),                                         # password, no user name
        connect("de\u00e9v1", user, sas), connect(b"de\x00v", user, sas), connect(b"\xc0\xaf", user, sas),
        request, subscribe(2, ("$iothub/twin/res/#", 0), ("$iothub/methods/POST/#", 1), ("devices/dev1/messages/devicebound/#", 1)),
        packet(0xA2, struct.pack("!H", 3) + string("$iothub/streams/POST/#")),   # UNSUBSCRIBE
        publish("$iothub/twin/GET/?$rid=2", b"", qos=1, pid=9), publish("devices/dev1/messages/events/", b"{}", qos=1),
        publish("$iothub/streams/res/abc/?$rid=1"), publish("$iothub/streams/res/200/"), publish("a/#"),
        bytes([0x40, 2, 0, 7]), bytes([0x20, 2, 0, 0]), bytes([0x90, 3, 0, 1, 0x80]), bytes([0xB0, 2, 0, 3]),
        bytes([0xD0, 0]), bytes([0xC0, 0]) * 4, bytes([0xE0, 0]),
        bytes([0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), bytes([0x30, 0x80, 0x80, 0x40]) + b"x" * 64,
        bytes([0x80, 0]), bytes([0x00, 0]), bytes([0xF0, 0]), bytes([0x36, 0]), bytes([0x82, 2, 0, 0]),
        bytes([0x82, 6, 0, 1, 0, 1, ord("t"), 3]), bytes([0x10]), bytes([0x10, 0x80]), b"",
        user.encode(), "h/dev?1/".encode(), b"wss://relay.example.com/bridges/h/d/s", b"wss://[::1]/x",
    ]


def write(target, items):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        if old.startswith("seed-"):
            os.remove(os.path.join(d, old))
    for i, item in enumerate(items):
        data = item if isinstance(item, bytes) else item.encode()  # str as UTF-8, bytes as they are
        with open(os.path.join(d, "seed-%03d" % i), "wb") as f:
            f.write(data)
    print("%-18s %d seeds" % (target, len(items)))


if __name__ == "__main__":
    write("connection_string", connection_strings())
    write("sas_token", sas_tokens())
    write("protocol", control_messages())
    write("router", router_paths())
    write("mqtt", mqtt_streams())
