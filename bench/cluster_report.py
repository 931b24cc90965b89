#!/usr/bin/env python3
"""bench/cluster.sh's report: cluster_report.py RESULTS META OUT

RESULTS holds the JSON lines bench/cluster.sh wrote in this run, META the run's machine and
command. Prints the table and writes everything, with the verdict on issue 10's goals, to OUT.
Every figure comes from this run's records; the only constants are the goals:
  - cross-node stream set-up p50 <= 2 x same-node p50, and <= 5 ms on this machine;
  - 3,000 devices of a killed node reconnected to the others within 30 s.
"""
import json
import sys


def load(path):
    records = {}
    for line in open(path):
        line = line.strip()
        if line:
            r = json.loads(line)
            records[r["name"]] = r["data"]
    return records


def ms(us):
    return round(us / 1000, 2) if isinstance(us, (int, float)) else None


def main():
    records = load(sys.argv[1])
    meta = json.load(open(sys.argv[2]))
    out = sys.argv[3]
    passes = sorted({k.split(".")[2] for k in records if k.startswith("setup.same.") or k.startswith("setup.cross.")})
    setup = {}
    for p in passes:
        same, cross = records.get(f"setup.same.{p}", {}), records.get(f"setup.cross.{p}", {})
        setup[p] = {
            "same_p50_ms": ms(same.get("p50_us")), "same_p99_ms": ms(same.get("p99_us")),
            "cross_p50_ms": ms(cross.get("p50_us")), "cross_p99_ms": ms(cross.get("p99_us")),
            "failures": (same.get("failures") or 0) + (cross.get("failures") or 0),
        }
        if setup[p]["same_p50_ms"] and setup[p]["cross_p50_ms"]:
            setup[p]["cross_over_same_p50"] = round(setup[p]["cross_p50_ms"] / setup[p]["same_p50_ms"], 2)
    f = records.get("failover", {})
    summary = {
        "setup": setup,
        "rate_spread_streams_per_s": records.get("rate.spread", {}).get("streams_per_s"),
        "rate_same_node_streams_per_s": records.get("rate.same_node", {}).get("streams_per_s"),
        "failover": f,
    }
    worst_ratio = max((s.get("cross_over_same_p50") or 99) for s in setup.values()) if setup else None
    worst_cross = max((s.get("cross_p50_ms") or 99) for s in setup.values()) if setup else None
    goals = {
        "cross_p50_le_2x_same": {"goal": "cross-node set-up p50 <= 2 x same-node p50 (every pass)",
                                 "measured": worst_ratio, "met": worst_ratio is not None and worst_ratio <= 2},
        "cross_p50_le_5ms": {"goal": "cross-node set-up p50 <= 5 ms here (every pass)",
                             "measured": worst_cross, "met": worst_cross is not None and worst_cross <= 5},
        "reconnect_le_30s": {"goal": f"all {f.get('on_n1_before')} devices of the killed node reconnected <= 30 s",
                             "measured": f.get("all_back_s"),
                             "met": f.get("all_back_s") is not None and f.get("reconnected") == f.get("on_n1_before")
                             and f.get("all_back_s") <= 30},
    }
    doc = {"meta": meta, "summary": summary, "goals": goals, "records": records}
    with open(out, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")

    def row(label, value, note=""):
        print(f"{label:<58} {value!s:<22} {note}")

    print(f"\nStreamgate cluster benchmark, {meta.get('date')}, {meta.get('nproc')} cores, "
          f"load {meta.get('loadavg_start')} -> {' '.join(meta.get('loadavg_end', []))}, commit {meta.get('git_commit')}")
    print(f"command: {meta.get('command')}\n")
    for p, s in setup.items():
        row(f"set-up {p}: same node (n1 holds the device) p50 / p99 ms", f"{s['same_p50_ms']} / {s['same_p99_ms']}")
        row(f"set-up {p}: cross node (asked of n2) p50 / p99 ms", f"{s['cross_p50_ms']} / {s['cross_p99_ms']}",
            f"x{s.get('cross_over_same_p50')} of same-node p50; failures {s['failures']}")
    hv = records.get("setup.home_view", {})
    row("set-up: n1's own request->joined p50 ms (all streams)", hv.get("setup_ms_p50"), f"{hv.get('count')} streams")
    rs, rn = records.get("rate.spread", {}), records.get("rate.same_node", {})
    row("new streams/s, 9 clients over n1 n2 n3 (2/3 cross)", rs.get("streams_per_s"), f"failures {rs.get('failures')}")
    row("new streams/s, 9 clients all on n1 (same node)", rn.get("streams_per_s"), f"failures {rn.get('failures')}")
    c = records.get("devices.connect", {})
    row("idle devices connected to n1 (s, per s)", f"{c.get('connected')} ({c.get('seconds')} s, {c.get('per_second')}/s)")
    row("kill -9 n1: devices reconnected to n2/n3", f"{f.get('reconnected')} of {f.get('on_n1_before')}", f"{f.get('to_relay')}")
    row("  all back (swarm's view) s", f.get("all_back_s"), f"p50 {f.get('reconnect_p50_s')} s, p99 {f.get('reconnect_p99_s')} s")
    row("  all presence rows on n2/n3 (database's view) s", f.get("db_all_back_s"))
    row("  reconnections per 1 s bucket after the kill", f.get("histogram_per_s"))
    row("  attempts per device", f.get("attempts"))
    row("  presence claims per s (peak 1 s / mean to all back)", f"{f.get('claims_per_s_peak')} / {f.get('claims_per_s_mean_to_all_back')}",
        f"claims in all {f.get('claims_during_failover')}")
    row("  reconnections per 100 ms after the kill", f.get("histogram_per_100ms"))
    row("  presence rows' claim times per 1 s (database)", f.get("db_claim_histogram_per_s"))
    print()
    for g in goals.values():
        print(f"{'MET   ' if g['met'] else 'MISSED'} {g['goal']}: {g['measured']}")


if __name__ == "__main__":
    main()
