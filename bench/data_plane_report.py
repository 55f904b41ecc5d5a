#!/usr/bin/env python3
"""Summarises bench/data-plane.sh runs: medians per topology, ratios to HAProxy, a Markdown table.

usage: data_plane_report.py RESULTS.jsonl OUT.json QUICK(0|1) SECONDS
"""
import json
import os
import platform
import statistics
import sys
from datetime import datetime, timezone

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
out_path, quick = sys.argv[2], sys.argv[3] == "1"
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
topos = ["direct", "edge", "haproxy", "nginx"]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


summary = {}
for t in topos:
    rs = [r for r in rows if r["topology"] == t]
    h1_cpu = [r["h1_cpu_s"] / r["h1_requests"] * 10_000 for r in rs if r["h1_requests"]]
    h2_cpu = [r["h2_cpu_s"] / r["h2_requests"] * 10_000 for r in rs if r["h2_requests"]]
    # System calls of the proxies over the throughput run's window, per request served in it.
    h1_sys = [r["h1_syscalls"] / (r["h1_rps"] * seconds) for r in rs if r.get("h1_syscalls") and r["h1_rps"]]
    h2_sys = [r["h2_syscalls"] / (r["h2_rps"] * seconds) for r in rs if r.get("h2_syscalls") and r["h2_rps"]]
    # Context switches of the proxies' threads over the throughput run, per request.
    h1_ctx = [r["h1_ctx"] / r["h1_requests"] for r in rs if r.get("h1_ctx") is not None and r["h1_requests"]]
    h2_ctx = [r["h2_ctx"] / r["h2_requests"] for r in rs if r.get("h2_ctx") is not None and r["h2_requests"]]
    summary[t] = {
        "h1_rps": med([r["h1_rps"] for r in rs]),
        "h2_rps": med([r["h2_rps"] for r in rs]),
        "h1_p50_us": med([r["lat_h1"]["p50_us"] for r in rs]),
        "h1_p99_us": med([r["lat_h1"]["p99_us"] for r in rs]),
        "h1_errors": sum(r["lat_h1"]["errors"] + r["h1_error_lines"] for r in rs),
        "h2_p50_us": med([r["lat_h2"]["p50_us"] for r in rs if r["lat_h2"]]),
        "h2_p99_us": med([r["lat_h2"]["p99_us"] for r in rs if r["lat_h2"]]),
        "h2_errors": sum(r["lat_h2"]["errors"] for r in rs if r["lat_h2"]),
        "h1_cpu_s_per_10k": med(h1_cpu) if t != "direct" else None,
        "h2_cpu_s_per_10k": med(h2_cpu) if t != "direct" else None,
        "h1_syscalls_per_request": med(h1_sys),
        "h2_syscalls_per_request": med(h2_sys),
        "h1_ctx_switches_per_request": med(h1_ctx) if t != "direct" else None,
        "h2_ctx_switches_per_request": med(h2_ctx) if t != "direct" else None,
        "peak_rss_mib": max(r["peak_rss_kb"] for r in rs) / 1024 if t != "direct" else None,
    }
base = summary["direct"]
for t in topos:
    s = summary[t]
    s["h1_added_p99_us"] = s["h1_p99_us"] - base["h1_p99_us"] if t != "direct" else 0

ha, edge = summary["haproxy"], summary["edge"]
verdict = {
    "h1_throughput_ratio_edge_over_haproxy": edge["h1_rps"] / ha["h1_rps"],
    "h2_throughput_ratio_edge_over_haproxy": edge["h2_rps"] / ha["h2_rps"],
    "h1_added_p99_edge_minus_haproxy_us": edge["h1_added_p99_us"] - ha["h1_added_p99_us"],
    "h2_p99_edge_minus_haproxy_us": edge["h2_p99_us"] - ha["h2_p99_us"],
}
verdict["throughput_target_met"] = (
    verdict["h1_throughput_ratio_edge_over_haproxy"] >= 1.0
    and verdict["h2_throughput_ratio_edge_over_haproxy"] >= 1.0
)
verdict["latency_target_met"] = (
    verdict["h1_added_p99_edge_minus_haproxy_us"] <= 0 and verdict["h2_p99_edge_minus_haproxy_us"] <= 0
)
doc = {
    "when": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
    "machine": {"cores": os.cpu_count(), "kernel": platform.release()},
    "quick": quick,
    "runs": rows,
    "median": summary,
    "verdict": verdict,
}
with open(out_path, "w") as f:
    json.dump(doc, f, indent=2)


def fmt(v, unit="", digits=0):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}{unit}"


print(f"\nData plane, median of {len(rows) // len(topos)} run(s) ({doc['when']}, {doc['machine']['cores']} cores)\n")
print("| topology | HTTP/1.1 max req/s (wrk) | h2c max req/s (h2load) | HTTP/1.1 p50 / p99 at fixed rate | h2c p50 / p99 at fixed rate | added p99 vs direct (HTTP/1.1) | proxy CPU s per 10k req (h1 / h2) | proxy system calls per req (h1 / h2) | proxy context switches per req (h1 / h2) | proxies' peak RSS |")
print("|---|---|---|---|---|---|---|---|---|---|")
for t in topos:
    s = summary[t]
    print(
        f"| {t} | {fmt(s['h1_rps'])} | {fmt(s['h2_rps'])} | {fmt(s['h1_p50_us'], ' µs')} / {fmt(s['h1_p99_us'], ' µs')} "
        f"| {fmt(s['h2_p50_us'], ' µs')} / {fmt(s['h2_p99_us'], ' µs')} | {fmt(s['h1_added_p99_us'], ' µs')} "
        f"| {fmt(s['h1_cpu_s_per_10k'], '', 3)} / {fmt(s['h2_cpu_s_per_10k'], '', 3)} "
        f"| {fmt(s['h1_syscalls_per_request'], '', 2)} / {fmt(s['h2_syscalls_per_request'], '', 2)} "
        f"| {fmt(s['h1_ctx_switches_per_request'], '', 2)} / {fmt(s['h2_ctx_switches_per_request'], '', 2)} | {fmt(s['peak_rss_mib'], ' MiB', 1)} |"
    )
v = verdict
print(
    f"\nedge-agent / HAProxy throughput: HTTP/1.1 {v['h1_throughput_ratio_edge_over_haproxy']:.2f}, "
    f"h2c {v['h2_throughput_ratio_edge_over_haproxy']:.2f} (target >= 1: {'met' if v['throughput_target_met'] else 'NOT met'})"
)
print(
    f"added p99, edge-agent minus HAProxy: HTTP/1.1 {v['h1_added_p99_edge_minus_haproxy_us']:+,.0f} µs, "
    f"h2c {v['h2_p99_edge_minus_haproxy_us']:+,.0f} µs (target <= 0: {'met' if v['latency_target_met'] else 'NOT met'})"
)
errors = {t: summary[t]["h1_errors"] + summary[t]["h2_errors"] for t in topos}
print(f"errors during the runs: {errors}")
