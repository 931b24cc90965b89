#!/usr/bin/env python3
"""Helpers for bench/run.sh.

  report.py iperf3 FILE                 one iperf3 -J result -> {"gbps": ..., "retransmits": ...}
  report.py table RESULTS META OUT      results (JSON lines from run.sh) + meta -> table on stdout,
                                        everything (with the verdict on each target) in OUT
  report.py markdown JSON               the table of a run's JSON (bench/results/latest.json) in
                                        Markdown, with its date, machine and command, for
                                        docs/BENCHMARKS.md
Every figure comes from the records run.sh wrote in this run; nothing here is a constant but
the targets of issue 5.

Rows 1-3 compare the tunnel with two peers measured in the same run: "reference" (the stunnel ->
socat -> stunnel TLS chain) and "openssh" (ssh -L -> sshd -> ssh -R, the OpenSSH reverse tunnel a
user would set up instead); every ratio is tunnel / peer. Runs made before the OpenSSH peer
existed have no "openssh" records: their tables simply leave those lines out.
"""
import json
import statistics
import sys


def iperf3_summary(path):
    with open(path) as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except ValueError:
        return {"error": "iperf3 wrote no JSON: " + text[:200]}
    if "error" in doc and not doc.get("end", {}).get("sum_received"):
        return {"error": doc["error"]}
    end = doc.get("end", {})
    received = end.get("sum_received", {})
    sent = end.get("sum_sent", {})
    return {
        "gbps": round(received.get("bits_per_second", 0) / 1e9, 3),
        "seconds": round(received.get("seconds", 0), 2),
        "bytes": received.get("bytes", 0),
        "retransmits": sent.get("retransmits"),
        "streams": len(end.get("streams", [])),
    }


def load_records(path):
    records = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            records.setdefault(r["name"], []).append(r["data"])
    return records


def median_of(runs, key):
    values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def fmt(v, digits=2):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


class Table:
    def __init__(self):
        self.rows = []
        self.verdicts = []

    def add(self, row, what, value, target="", status=""):
        self.rows.append((row, what, value, target, status))

    def check(self, row, what, value, ok, target, stretch_ok=None, stretch=None, shown=None):
        if value is None:
            status = "not run"
        elif ok:
            status = "met"
            if stretch_ok is not None:
                status += ", stretch met" if stretch_ok else ", stretch missed"
        else:
            status = "MISSED"
        target_text = target + (f" (stretch {stretch})" if stretch else "")
        self.add(row, what, shown if shown is not None else fmt(value), target_text, status)
        self.verdicts.append({"row": row, "measure": what, "value": value, "target": target_text, "status": status})

    def markdown(self):
        out = ["| row | measure | value | target | status |", "| --- | --- | --- | --- | --- |"]
        out += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in self.rows]
        return "\n".join(out)

    def render(self):
        header = ("row", "measure", "value", "target", "status")
        widths = [max(len(str(r[i])) for r in self.rows + [header]) for i in range(5)]
        line = "  ".join("{:<%d}" % w for w in widths)
        out = [line.format(*header), line.format(*("-" * w for w in widths))]
        out += [line.format(*map(str, r)) for r in self.rows]
        return "\n".join(out)


def cores_used(records, name):
    runs = records.get(f"cpu.{name}", [])
    if not runs:
        return None
    keys = {k for r in runs for k in r if k.endswith("_pct")}
    return sum(median_of(runs, k) or 0 for k in keys) / 100


PEERS = ("reference", "openssh")
PEER_NAMES = {"reference": "reference chain", "openssh": "OpenSSH"}


def ratio(a, b):
    return a / b if a is not None and b else None


def ratio_text(pairs, digits=2):
    """[(label, value)] -> "label a / label b" of the values present (n/a for a missing one)."""
    return " / ".join(fmt(v, digits) for _, v in pairs)


def cpu_line(t, records, row, name, label):
    runs = records.get(f"cpu.{name}", [])
    if not runs:
        return
    keys = [k for k in runs[0] if k.endswith("_pct")]
    parts = [f"{k[:-4].replace('_', ' ')} {fmt(median_of(runs, k), 0)}" for k in keys]
    t.add(row, f"CPU, % of one core, during {label}", ", ".join(parts) + f" (load avg {runs[-1].get('loadavg')})")


def build(records, meta):
    t = Table()
    summary = {}

    negotiated = (records.get("openssh.negotiated") or [None])[-1]
    if negotiated:
        t.add("1-3", "OpenSSH peer, with OpenSSH's defaults: version, key exchange, host key, cipher",
              ", ".join(str(negotiated.get(k)) for k in ("version", "kex", "host_key", "cipher")))

    # 1. Bulk throughput, one stream each way.
    paths = ("direct", "reference", "openssh", "tunnel")
    for direction in ("up", "down"):
        g = {p: median_of(records.get(f"bulk.{direction}.{p}", []), "gbps") for p in paths}
        if not any(v is not None for v in g.values()):
            continue
        summary[f"bulk_{direction}_gbps"] = g
        label = "upload (service->device)" if direction == "up" else "download (device->service)"
        for p in paths:
            runs = [r.get("gbps") for r in records.get(f"bulk.{direction}.{p}", [])]
            if not runs:
                continue
            t.add("1", f"{label}: {p} Gbit/s", fmt(g[p]) + (f"  (runs {', '.join(fmt(x) for x in runs)})" if len(runs) > 1 else ""))
        if g["tunnel"] is not None and g["direct"]:
            t.add("1", f"{label}: tunnel/direct", fmt(g["tunnel"] / g["direct"]))
        r = ratio(g["tunnel"], g["reference"])
        summary[f"bulk_{direction}_tunnel_over_reference"] = r
        t.check("1", f"{label}: tunnel/reference", r, r is not None and r >= 1.0, ">= 1.0x",
                r is not None and r >= 1.5, "1.5x")
        if records.get(f"bulk.{direction}.openssh"):
            r = ratio(g["tunnel"], g["openssh"])
            summary[f"bulk_{direction}_tunnel_over_openssh"] = r
            t.add("1", f"{label}: tunnel/openssh", fmt(r))
    for direction, label in (("up", "upload"), ("down", "download")):
        for path in ("reference", "openssh", "tunnel"):
            cpu_line(t, records, "1", f"bulk-{direction}-{path}", f"{path} {label}")
        per_gbps = {}
        for path in ("reference", "openssh", "tunnel"):
            cores = cores_used(records, f"bulk-{direction}-{path}")
            g = summary.get(f"bulk_{direction}_gbps", {}).get(path)
            per_gbps[path] = cores / g if cores and g else None
        if per_gbps["tunnel"] is not None:
            summary[f"bulk_{direction}_cores_per_gbps"] = per_gbps
            t.add("1", f"{label}: CPU cores per Gbit/s, reference chain / tunnel (load-independent cost)",
                  f"{fmt(per_gbps['reference'])} / {fmt(per_gbps['tunnel'])}")
            if records.get(f"cpu.bulk-{direction}-openssh"):
                t.add("1", f"{label}: CPU cores per Gbit/s, OpenSSH (ssh -L + 2 sshd sessions + ssh -R)",
                      fmt(per_gbps["openssh"]))
                t.add("1", f"{label}: CPU cores per Gbit/s, tunnel/reference, tunnel/openssh (lower is better)",
                      ratio_text([(p, ratio(per_gbps["tunnel"], per_gbps[p])) for p in PEERS]))
        # System calls come from the extra traced run (timed runs are not traced; older
        # results without it counted in the timed runs).
        counted = records.get(f"cpu.bulk-counted-{direction}-tunnel", [])
        runs = counted or records.get(f"cpu.bulk-{direction}-tunnel", [])
        g = (median_of(records.get(f"bulk-counted.{direction}.tunnel", []), "gbps") if counted
             else summary.get(f"bulk_{direction}_gbps", {}).get("tunnel"))
        if runs and g:
            mib = g * 1e9 / 8 / 2**20 * (median_of(runs, "seconds") or 0)  # carried in the window (approx.)
            per = lambda key: sum(median_of(runs, f"{p}_{key}") or 0 for p in ("relay", "service_proxy", "device_proxy")) / mib
            summary[f"bulk_{direction}_syscalls_per_mib"] = per("syscalls")
            summary[f"bulk_{direction}_context_switches_per_mib"] = per("context_switches")
            t.add("1", f"{label}: tunnel syscalls / context switches per MiB (relay + proxies)",
                  f"{fmt(per('syscalls'), 1)} / {fmt(per('context_switches'), 1)}")

    # 2. Latency.
    lat = {p: (records.get(f"latency.{p}") or [None])[-1] for p in paths}
    lat = {p: (v if v and "p50_us" in v else None) for p, v in lat.items()}
    if lat["tunnel"]:
        for p in paths:
            if lat[p]:
                t.add("2", f"64 B round trip {p}: p50 / p99 us", f"{fmt(lat[p]['p50_us'], 1)} / {fmt(lat[p]['p99_us'], 1)}")
            elif records.get(f"latency.{p}"):
                t.add("2", f"64 B round trip {p}: p50 / p99 us", f"failed: {records[f'latency.{p}'][-1]}")
        if lat["direct"]:
            added = lat["tunnel"]["p50_us"] - lat["direct"]["p50_us"]
            summary["latency_added_p50_us"] = added
            t.check("2", "added round trip (tunnel p50 - direct p50) us", added, added <= 120, "<= 120 us",
                    shown=fmt(added, 1))
            if lat["openssh"]:
                peer_added = {p: lat[p]["p50_us"] - lat["direct"]["p50_us"] if lat[p] else None for p in PEERS}
                summary["latency_peer_added_p50_us"] = peer_added
                t.add("2", "added round trip over direct p50 us, reference / openssh / tunnel",
                      f"{fmt(peer_added['reference'], 1)} / {fmt(peer_added['openssh'], 1)} / {fmt(added, 1)}")
        if lat["openssh"]:
            for q in ("p50_us", "p99_us"):
                rs = {p: ratio(lat["tunnel"][q], lat[p][q] if lat[p] else None) for p in PEERS}
                summary[f"latency_tunnel_over_peers_{q[:3]}"] = rs
                t.add("2", f"round trip {q[:3]}: tunnel/reference, tunnel/openssh (lower is better)", ratio_text(list(rs.items())))
        p99 = lat["tunnel"]["p99_us"]
        summary["latency_tunnel_p99_us"] = p99
        t.check("2", "tunnel p99 us", p99, p99 < 350, "< 350 us", shown=fmt(p99, 1))

    # 3. Stream setup.
    seq = (records.get("setup.sequential") or [None])[-1]
    if seq:
        p50 = seq["p50_us"] / 1000
        summary["setup_p50_ms"] = p50
        t.check("3", f"setup connect->first echoed byte p50 ms (n={seq['count']}, failures {seq['failures']})", p50,
                p50 < 5, "< 5 ms", shown=fmt(p50))
        t.add("3", "setup p99 ms", fmt(seq["p99_us"] / 1000))
    view = (records.get("setup.relay_view") or [None])[-1]
    if view and view.get("setup_ms_p50") is not None:
        t.add("3", "of which the relay logged request -> both sides joined (setupMs p50)", fmt(view["setup_ms_p50"]))
    rate = (records.get("setup.rate") or [None])[-1]
    if rate:
        summary["streams_per_s"] = rate["streams_per_s"]
        t.check("3", f"new streams/s, {rate['clients']} parallel clients ({rate['streams']} streams, "
                     f"{rate['failures']} failed)", rate["streams_per_s"], rate["streams_per_s"] >= 500, ">= 500/s",
                shown=fmt(rate["streams_per_s"], 0))
        t.add("3", "setup under that load p50 / p99 ms",
              f"{fmt(rate['setup_p50_us'] / 1000)} / {fmt(rate['setup_p99_us'] / 1000)}")
    user = (records.get("setup.user_view") or [None])[-1]
    if user and "setup_p50_us" in user:
        p50 = user["setup_p50_us"] / 1000
        summary["setup_user_view_p50_ms"] = p50
        t.check("3", f"as a user's clients see it: {user['clients']} clients, {user['streams']} connections "
                     f"({user['failures']} failed), connect->first echoed byte p50 ms", p50, p50 <= 2, "<= 2 ms (goal)")
        t.add("3", "  its p99 ms / streams per s",
              f"{fmt(user['setup_p99_us'] / 1000)} / {fmt(user['streams_per_s'], 0)} (goal >= 800)")
    cpu_line(t, records, "3", "setup-rate", "new streams")
    cores = cores_used(records, "setup-rate")
    if rate and cores and rate.get("streams_per_s"):
        ms = cores / rate["streams_per_s"] * 1000
        summary["cpu_ms_per_stream_setup"] = ms
        t.add("3", "CPU ms (relay + proxies) per new stream", fmt(ms))
    # The same set-up through the peers (and straight to the echo server).
    peer_seq = {p: (records.get(f"setup.sequential.{p}") or [None])[-1] for p in ("direct",) + PEERS}
    peer_seq = {p: (v if v and "p50_us" in v else None) for p, v in peer_seq.items()}
    if any(peer_seq.values()):
        for p, v in peer_seq.items():
            if v:
                t.add("3", f"setup p50 / p99 ms, {p} (n={v['count']}, failures {v['failures']})",
                      f"{fmt(v['p50_us'] / 1000)} / {fmt(v['p99_us'] / 1000)}")
            elif records.get(f"setup.sequential.{p}"):
                t.add("3", f"setup p50 / p99 ms, {p}", f"failed: {records[f'setup.sequential.{p}'][-1]}")
        if seq:
            rs = {p: ratio(seq["p50_us"], peer_seq[p]["p50_us"] if peer_seq[p] else None) for p in PEERS}
            summary["setup_p50_tunnel_over_peers"] = rs
            t.add("3", "setup p50: tunnel/reference, tunnel/openssh (lower is better)", ratio_text(list(rs.items())))
    peer_rate = {p: (records.get(f"setup.rate.{p}") or [None])[-1] for p in PEERS}
    peer_rate = {p: (v if v and "streams_per_s" in v else None) for p, v in peer_rate.items()}
    peer_ms = {}
    for p, v in peer_rate.items():
        if not v:
            if records.get(f"setup.rate.{p}"):
                t.add("3", f"new streams/s, {p}", f"failed: {records[f'setup.rate.{p}'][-1]}")
            continue
        t.add("3", f"new streams/s, {p}, {v['clients']} parallel clients ({v['streams']} streams, {v['failures']} failed)",
              f"{fmt(v['streams_per_s'], 0)} (set-up p50 / p99 {fmt(v['setup_p50_us'] / 1000)} / "
              f"{fmt(v['setup_p99_us'] / 1000)} ms)")
        cpu_line(t, records, "3", f"setup-rate-{p}", f"new streams, {p}")
        c = cores_used(records, f"setup-rate-{p}")
        peer_ms[p] = c / v["streams_per_s"] * 1000 if c and v["streams_per_s"] else None
        t.add("3", f"CPU ms ({'stunnel x2 + socat' if p == 'reference' else 'ssh x2 + sshd sessions'}) per new stream, {p}",
              fmt(peer_ms[p]))
    if rate and any(peer_rate.values()):
        rs = {p: ratio(rate["streams_per_s"], peer_rate[p]["streams_per_s"] if peer_rate[p] else None) for p in PEERS}
        summary["streams_per_s_tunnel_over_peers"] = rs
        t.add("3", "new streams/s: tunnel/reference, tunnel/openssh", ratio_text(list(rs.items())))
        ms = summary.get("cpu_ms_per_stream_setup")
        rs = {p: ratio(ms, peer_ms.get(p)) for p in PEERS}
        summary["cpu_ms_per_stream_tunnel_over_peers"] = rs
        t.add("3", "CPU ms per new stream: tunnel/reference, tunnel/openssh (lower is better)",
              ratio_text(list(rs.items())))
    negotiated = (records.get("openssh.negotiated") or [None])[-1]
    if negotiated:
        summary["openssh_negotiated"] = negotiated

    # 4. Concurrency.
    conc = sorted((r for k, v in records.items() if k.startswith("concurrency.") for r in v), key=lambda r: r["requested"])
    for c in conc:
        note = "" if c["ran"] == c["requested"] else f" (asked {fmt(c['requested'])}, capped: {c.get('cap_reason', '')})"
        if c.get("relay_under_heaptrack"):
            note += " [relay under heaptrack: RSS inflated]"
        per = c.get("relay_kib_per_stream")
        name = f"{fmt(c['ran'])} streams: established {fmt(c['established'])} in {fmt(c['seconds'], 1)} s{note}"
        t.add("4", name, f"still open at the end: {fmt(c.get('still_open'))}")
        t.check("4", f"{fmt(c['ran'])} streams: relay RSS KiB per stream", per, per is not None and per < 160,
                "< 160 KiB", per is not None and per < 64, "64 KiB", shown=fmt(per, 1))
        t.add("4", f"{fmt(c['ran'])} streams: service / device proxy RSS KiB per stream",
              f"{fmt(c.get('service_proxy_kib_per_stream'), 1)} / {fmt(c.get('device_proxy_kib_per_stream'), 1)}")
    if conc:
        most = max(c["established"] for c in conc)
        t.check("4", "concurrent streams held on one relay", most, most >= 10000, ">= 10,000")
    if conc:
        summary["concurrency"] = conc
    for direction in ("up", "down"):
        a = {p: median_of(records.get(f"aggregate100.{direction}.{p}", []), "gbps") for p in ("direct", "reference", "tunnel")}
        if a["tunnel"] is not None:
            summary[f"aggregate100_{direction}_gbps"] = a
            t.add("4", f"100 active streams {direction}, Gbit/s direct / reference / tunnel",
                  " / ".join(fmt(a[p]) for p in ("direct", "reference", "tunnel")))
            for path in ("reference", "tunnel"):
                cpu_line(t, records, "4", f"aggregate100-{direction}-{path}", f"100 streams {direction}, {path}")

    # 5. Idle devices.
    created = (records.get("devices.create") or [None])[-1]
    if created:
        t.add("5", f"register {fmt(created['requested'])} devices (REST PUT, {created.get('parallel')} connections)",
              f"{fmt(created['per_second'], 0)}/s, {fmt(created['seconds'], 1)} s, {created['failed']} failed")
    admin = (records.get("devices.admin_cli") or [None])[-1]
    if admin:
        t.add("5", f"register with the admin CLI ({admin['count']} devices, {admin['parallel']} at a time)",
              f"{fmt(admin['per_second'], 1)}/s")
    dev = (records.get("devices.connect") or [None])[-1]
    if dev:
        summary["devices"] = dev
        t.add("5", f"connect {fmt(dev['requested'])} devices: time to connect all",
              f"{fmt(dev['seconds'], 1)} s ({fmt(dev['per_second'], 0)}/s, {dev['failed']} failed, p50 {fmt(dev['connect_p50_ms'])} ms)")
        per = dev.get("relay_kib_per_device")
        t.check("5", f"{fmt(dev['connected'])} idle devices: relay RSS KiB per device", per,
                per is not None and per < 80, "< 80 KiB", per is not None and per < 32, "32 KiB", shown=fmt(per, 1))
        t.check("5", "idle devices connected to one relay", dev["connected"], dev["connected"] >= 10000, ">= 10,000")
        if dev.get("shown_connected") is not None:
            t.add("5", "sample of devices shown Connected by the admin CLI", f"{dev['shown_connected']}/{dev['shown_sampled']}")

    # 6. Backpressure.
    for direction in ("up", "down"):
        b = (records.get(f"backpressure.{direction}") or [None])[-1]
        if not b:
            continue
        worst = max(b[k] for k in ("relay_peak_growth_kib", "service_proxy_peak_growth_kib", "device_proxy_peak_growth_kib"))
        t.add("6", f"{direction}: fast sender -> 1 MiB/s reader, {fmt(b['seconds'], 0)} s",
              f"sent {fmt(b['bytes_sent'] / 2**20, 1)} MiB, read {fmt(b['bytes_read'] / 2**20, 1)} MiB")
        t.check("6", f"{direction}: peak RSS growth KiB relay / service proxy / device proxy", worst, worst <= 1024,
                "<= 1024 KiB each",
                shown=f"{fmt(b['relay_peak_growth_kib'])} / {fmt(b['service_proxy_peak_growth_kib'])} / "
                      f"{fmt(b['device_proxy_peak_growth_kib'])}")
    return t, summary


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "iperf3":
        print(json.dumps(iperf3_summary(sys.argv[2])))
        return 0
    if len(sys.argv) == 5 and sys.argv[1] == "table":
        records = load_records(sys.argv[2])
        with open(sys.argv[3]) as f:
            meta = json.load(f)
        table, summary = build(records, meta)
        print(f"Streamgate benchmark  {meta.get('date')}  {meta.get('cpu_model')} x{meta.get('nproc')}  "
              f"load at start {meta.get('loadavg_start')}")
        print(table.render())
        with open(sys.argv[4], "w") as f:
            json.dump({"meta": meta, "summary": summary, "targets": table.verdicts, "records": records}, f, indent=2)
            f.write("\n")
        return 0
    if len(sys.argv) == 3 and sys.argv[1] == "markdown":
        with open(sys.argv[2]) as f:
            doc = json.load(f)
        meta = doc["meta"]
        table, _ = build(doc["records"], meta)
        print(f"- date: {meta.get('date')}; took {meta.get('seconds')} s")
        print(f"- machine: {meta.get('nproc')} cores, {meta.get('cpu_model')}, "
              f"{round(meta.get('mem_total_kib', 0) / 2**20, 1)} GiB, kernel {meta.get('kernel')}, "
              f"fd limit {meta.get('fd_limit')}")
        print(f"- load average (1/5/15 min) at start {meta.get('loadavg_start')}, at end "
              f"{' '.join(meta.get('loadavg_end', []))}")
        print(f"- code: commit {meta.get('git_commit')}"
              + (" plus uncommitted changes in the work tree" if meta.get("worktree_modified") else ""))
        print(f"- command: `{meta.get('command')}`")
        print(f"- relay started with: `{meta.get('relay_args')}`")
        print()
        print(table.markdown())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
