#!/usr/bin/env python3
"""Summarises `v86-loadtest --json` runs of the dhcp and dns modes (one JSON object per line
on stdin): one line per run, then the medians. Used by loadtest/bench.sh."""

import json
import statistics
import sys


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def cpu(d, key="relay_cpu"):
    return (d.get(key) or {}).get("percent_of_one_core")


rows = [json.loads(line) for line in sys.stdin if line.startswith("{")]
parts = [(r, r.get("dhcp") or r.get("dns")) for r in rows]
parts = [(r, d) for r, d in parts if d]
for r, d in parts:
    lat = d["latency"]
    if "handshakes_per_s" in d:
        print(
            f"   run: {d['handshakes_per_s']:.0f} handshakes/s, p50 {lat['p50_us']:.0f} us, "
            f"p99 {lat['p99_us']:.0f} us, relay {cpu(d) or 0:.0f} % CPU, "
            f"{d['relay_cpu_us_per_handshake'] or 0:.0f} us relay CPU/handshake, "
            f"load generator {cpu(d, 'loadgen_cpu') or 0:.0f} % CPU, failed {d['failed']}, "
            f"retransmissions {d['retransmissions']}, errors {r['errors']}"
        )
    else:
        print(
            f"   run: {d['answers_per_s']:.0f} answers/s, p50 {lat['p50_us']:.0f} us, "
            f"p99 {lat['p99_us']:.0f} us, relay {cpu(d) or 0:.0f} % CPU, "
            f"{d['relay_cpu_us_per_query'] or 0:.1f} us relay CPU/answer, "
            f"upstream {cpu(d, 'upstream_cpu') or 0:.0f} % CPU, "
            f"load generator {cpu(d, 'loadgen_cpu') or 0:.0f} % CPU, "
            f"REFUSED {d['refused']}, SERVFAIL {d['servfail']}, lost {d['lost']}, "
            f"errors {r['errors']}"
        )
ds = [d for _, d in parts]
if not ds:
    print("   no results (see the load test's stderr)")
elif "handshakes_per_s" in ds[0]:
    print(
        f"   median of {len(ds)}: {med([d['handshakes_per_s'] for d in ds]):.0f} handshakes/s, "
        f"p50 {med([d['latency']['p50_us'] for d in ds]):.0f} us, "
        f"p99 {med([d['latency']['p99_us'] for d in ds]):.0f} us, "
        f"relay {med([cpu(d) for d in ds]):.0f} % CPU, "
        f"{med([d['relay_cpu_us_per_handshake'] for d in ds]):.0f} us relay CPU per handshake"
    )
else:
    print(
        f"   median of {len(ds)}: {med([d['answers_per_s'] for d in ds]):.0f} answers/s, "
        f"p50 {med([d['latency']['p50_us'] for d in ds]):.0f} us, "
        f"p99 {med([d['latency']['p99_us'] for d in ds]):.0f} us, "
        f"relay {med([cpu(d) for d in ds]):.0f} % CPU, "
        f"{med([d['relay_cpu_us_per_query'] for d in ds]):.1f} us relay CPU per answer, "
        f"REFUSED {med([d['refused'] for d in ds]):.0f}"
    )
