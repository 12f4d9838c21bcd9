"""Puts and gets of small values on 32 nodes in one process: ours with mutual TLS, ours
in plaintext, and kademlia.

What it measures: for values of 1,024 B, 8,000 B and 100,000 B, how many puts and
gets per second one node can do, and their median and p99 latency, one at a time
and with 32 in flight. Ours is a ring of 32 chordcdn nodes in ONE trio process on
127.0.0.1, each as `tools.noderun.serve_local_node` runs it (its own node
certificate from a throwaway cluster CA, or `--insecure`-style plaintext; r = 3;
blocks in memory). A value is one block under key = SHA-256(value): node A puts it
(`DhtClient.for_node(A).put_block`: a lookup of A's, then a copy to each of the 3
replicas), node B, which did not put it, gets it (`DhtClient.for_node(B).get_block`:
a lookup of B's, then the first replica). The peer is 32 `kademlia.network.Server`s
(PyPI; UDP via rpcudp, asyncio; k = 20, so 20 copies) in ONE asyncio process on
127.0.0.1: `set(key, value)` on server A, `get(key)` on server B.

How: each system runs in a worker process of its own (this module with --worker),
so trio and asyncio never share a loop; the systems take turns round by round (the
order rotates), each round on a freshly built cluster. Ours waits until every
node's predecessor and first r−1 successors are the true ones (and, with a shorter
deadline, every finger), then has every node ping every other once, so that the
links (and TLS sessions) a ring that has run for a while holds are open, and warms
up with untimed puts and gets. kademlia, which has no links to open, gets a fresh
set of servers for each size and mode, each server bootstrapped twice, so that the
UDP losses of one phase (and the re-announcements of every stored value to the peers
it dropped and found again) do not carry over to the next. Each size and mode puts
its own fresh random values from A, then gets the stored ones from B, recording each
operation's latency (`perf_counter_ns`) and every failure; a get must return the
very bytes put. Every operation has a deadline; a mode stops after 25 failures in a
row (3 x the operations in flight, if more). A get whose put failed is not tried and
counts as failed.

The report gives, per system, size, mode and operation, the median across rounds
of ops/s, p50 and p99 (ms), and the failures; the ratios of get and put rates
ours/kademlia (the median of per-round ratios); and whether the bars hold: with
mutual TLS, gets ≥ 1.0× kademlia's rate (every size and mode where at most 1% of
kademlia's gets failed) and get p99 ≤ 2 ms (one in flight: with 32 in flight
latency is mostly queueing behind the other 31). As a shared machine's other work
moves wall-clock figures a lot, it also gives the CPU time per operation (the whole
process: the client and all 32 nodes) and, one in flight, each operation's own CPU
time: every node runs in the one thread, so that is the latency an idle machine
would show, here also less the collector's share (`gc.callbacks` time every
collection).

kademlia cannot store 100,000 B values: rpcudp refuses a request over 8 KiB, and
no UDP datagram carries 100,000 B. Its failures are counted and shown beside ours.
Gets from B are answered from B's own store without any network call when B holds
one of the 20 copies (about 20 of 32 times); the report says how often, and gives
the figures of the gets that needed the network apart.

    python -m tools.bench.bench_small [--rounds 3] [--values 1000] [--big-values 200] [--quick] [--json]

--ours-gc freeze|off runs our workers with the collector frozen (`gc.freeze()`) or
off after the warm-up, to show what garbage collection costs; the default leaves it
as a node runs it. kademlia is the optional extra "bench"; without it the report
gives our figures alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Sequence

import trio

from dht.identity import Role
from tools.argtypes import integer, positive
from tools.bench.bench_rpc import kademlia_version, progress
from tools.bench.common import run_interruptibly
from tools.bench.smallload import (
    FINGER_TIMEOUT,
    GIVE_UP_AFTER,
    MODES,
    NODES,
    OPERATIONS,
    REPLICAS,
    BenchError,
    Options,
    describe_size,
    ms,
    plan_of,
)
from tools.bench.smallworkers import run_worker, worker_main
from tools.cluster import LocalCluster

SYSTEMS = ("tls", "plaintext", "kademlia")
LABELS = {"tls": "ours, mutual TLS", "plaintext": "ours, plaintext", "kademlia": "kademlia"}
RATE_BAR = 1.0  # TLS get ops/s over kademlia's
MAX_PEER_FAILURES = 0.01  # past this share of failed kademlia operations, its rate is not compared
P99_BAR_MS = 2.0  # TLS get p99, one in flight
GC_MODES = ("default", "freeze", "off")
MAX_ROUNDS, MAX_VALUES = 50, 100_000


# -- the run -----------------------------------------------------------------------------


@dataclass
class Results:
    rounds: list[dict[str, dict[str, Any]]] = field(default_factory=list)  # round -> system -> worker result
    kademlia_note: str | None = None


def rotated(systems: Sequence[str], by: int) -> list[str]:
    by %= len(systems)
    return [*systems[by:], *systems[:by]]


def run(options: Options) -> Results:
    results = Results()
    if kademlia_version() is None:
        results.kademlia_note = "the kademlia package is not installed (pip install kademlia, or the 'bench' extra)"
    with tempfile.TemporaryDirectory(prefix="bench-small-pki-") as directory:
        pki = Path(directory)
        cluster = LocalCluster(pki)
        for index in range(NODES):
            cluster.files(f"node-{index}", Role.NODE)
        for round_no in range(1, options.rounds + 1):
            results.rounds.append({})
            for system in rotated(SYSTEMS, round_no - 1):
                if system == "kademlia" and results.kademlia_note:
                    continue
                progress(f"round {round_no}: {LABELS[system]}")
                try:
                    results.rounds[-1][system] = run_worker(system, options, pki)
                except BenchError as exc:
                    if system != "kademlia":
                        raise
                    results.kademlia_note = f"kademlia failed in round {round_no}: {exc}"
    return results


# -- the report --------------------------------------------------------------------------


def figures_of(worker: dict[str, Any] | None, size: int, mode: str, op: str) -> dict[str, Any] | None:
    if worker is None:
        return None
    for entry in worker["sizes"]:
        if entry["size"] == size:
            return entry["modes"][mode][op]  # type: ignore[no-any-return]
    return None


def middle(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return median(present) if present else None


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Median across rounds of each figure; failures and copies held summed; the rounds themselves kept."""
    if not rounds:
        return None
    errors = [r["first_error"] for r in rounds if r["first_error"]]
    held = [r["getter_holds"] for r in rounds if "getter_holds" in r]
    summary = {
        "ops_per_s": median(r["ops_per_s"] for r in rounds),
        "p50_ms": middle([r["p50_ms"] for r in rounds]),
        "p99_ms": middle([r["p99_ms"] for r in rounds]),
        "cpu_us_per_op": middle([r["cpu_us_per_op"] for r in rounds]),
        "on_cpu_p50_ms": middle([r["on_cpu_p50_ms"] for r in rounds]),
        "on_cpu_p99_ms": middle([r["on_cpu_p99_ms"] for r in rounds]),
        "on_cpu_p99_without_gc_ms": middle([r["on_cpu_p99_without_gc_ms"] for r in rounds]),
        "failures": sum(r["failures"] for r in rounds),
        "not_attempted": sum(r["not_attempted"] for r in rounds),
        "not_stored": sum(r["not_stored"] for r in rounds),
        "operations": sum(r["ok"] + r["failures"] for r in rounds),
        "first_error": errors[0] if errors else None,
        "gc_pause_ms_total": median(r["gc"]["pause_ms_total"] for r in rounds),
        "gc_pause_ms_max": median(r["gc"]["pause_ms_max"] for r in rounds),
        "gc_gen2_collections": median(r["gc"]["collections"][2] for r in rounds),
        "rounds": rounds,
    }
    if held:
        summary["getter_holds"] = sum(held)
        summary["network_gets"] = sum(r["network_gets"] for r in rounds)
        for key in ("network_p50_ms", "network_p99_ms", "network_ops_per_s_one_at_a_time"):
            summary[key] = middle([r[key] for r in rounds])
    return summary


def paired_ratio(results: Results, system: str, other: str, size: int, mode: str, op: str) -> float | None:
    """Median over rounds of (system / other ops/s) in each round: both ran in it, back to back."""
    ratios = []
    for workers in results.rounds:
        ours, theirs = figures_of(workers.get(system), size, mode, op), figures_of(workers.get(other), size, mode, op)
        if ours is not None and theirs is not None and theirs["ok"]:
            ratios.append(ours["ops_per_s"] / theirs["ops_per_s"])
    return median(ratios) if ratios else None


def bars(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each bar with its figure: gets ≥ RATE_BAR × kademlia (where kademlia succeeded), get p99 ≤ P99_BAR_MS one in flight."""
    checks = []
    for entry in data["table"]:
        if entry["op"] != "get":
            continue
        ratio, kademlia = entry["ratios"]["tls_over_kademlia"], entry["systems"]["kademlia"]
        if ratio is not None:
            failed = kademlia["failures"] / kademlia["operations"]
            check = {"bar": f"get rate >= {RATE_BAR:g}x kademlia", "size": entry["size"], "in_flight": entry["in_flight"], "value": ratio}
            # where kademlia's own gets mostly failed, its rate is no yardstick
            check.update({"met": ratio >= RATE_BAR} if failed <= MAX_PEER_FAILURES else {"met": None, "kademlia_failed": failed})
            checks.append(check)
        tls = entry["systems"]["tls"]
        if entry["in_flight"] == 1 and tls is not None and tls["p99_ms"] is not None:
            checks.append({"bar": f"get p99 <= {P99_BAR_MS:g} ms", "size": entry["size"], "in_flight": 1, "value": tls["p99_ms"], "met": tls["p99_ms"] <= P99_BAR_MS})
    return checks


def report(results: Results, options: Options) -> dict[str, Any]:
    plan = plan_of(options.values, options.big_values, options.ours_gc, options.lifetime)
    table = []
    for size, count in plan.sizes:
        for mode, width in MODES.items():
            for op in OPERATIONS:
                systems = {s: summarize([f for w in results.rounds if (f := figures_of(w.get(s), size, mode, op)) is not None]) for s in SYSTEMS}
                ratios = {
                    "tls_over_kademlia": paired_ratio(results, "tls", "kademlia", size, mode, op),
                    "plaintext_over_kademlia": paired_ratio(results, "plaintext", "kademlia", size, mode, op),
                    "tls_over_plaintext": paired_ratio(results, "tls", "plaintext", size, mode, op),
                }
                table.append({"size": size, "values": count, "mode": mode, "in_flight": width, "op": op, "systems": systems, "ratios": ratios})
    data: dict[str, Any] = {
        "benchmark": f"put and get of single values, {NODES} nodes in one process per system, 127.0.0.1",
        "nodes": NODES,
        "replicas": {"ours": REPLICAS, "kademlia": 20},
        "rounds": options.rounds,
        "values_per_mode": dict(plan.sizes),
        "in_flight": dict(MODES),
        "ours_gc": options.ours_gc,
        "figures": "median across rounds; latencies in milliseconds; failures summed over rounds",
        "table": table,
        "setup": {s: [w[s]["setup"] for w in results.rounds if s in w] for s in SYSTEMS},
        "kademlia_note": results.kademlia_note,
        "kademlia_background_errors": background_errors(results),
        "environment": {
            "python": platform.python_version(),
            "trio": trio.__version__,
            "kademlia": kademlia_version(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
        },
    }
    data["bars"] = bars(data)
    return data


def background_errors(results: Results) -> dict[str, int]:
    """What kademlia's own background tasks raised, by type, over all rounds."""
    counts: dict[str, int] = {}
    for workers in results.rounds:
        for name, count in workers.get("kademlia", {}).get("background_errors", {}).items():
            counts[name] = counts.get(name, 0) + count
    return counts


def cells(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return f"{'-':>8} {'-':>6} {'-':>6} {'-':>7}"
    failed = f"{summary['failures']}/{summary['operations']}" if summary["failures"] else "0"
    return f"{summary['ops_per_s']:>8,.0f} {ms(summary['p50_ms']):>6} {ms(summary['p99_ms']):>6} {failed:>7}"


def times(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def render(data: dict[str, Any]) -> list[str]:
    kademlia = " ".join(filter(None, ["kademlia", data["environment"]["kademlia"], "(UDP, asyncio, k=20)"]))
    per_mode = ", ".join(f"{count:,} of {describe_size(int(size))}" for size, count in data["values_per_mode"].items())
    gc_note = "" if data["ours_gc"] == "default" else f"; ours with the collector {'frozen' if data['ours_gc'] == 'freeze' else 'off'} after the warm-up"
    header = f"{'ops/s':>8} {'p50':>6} {'p99':>6} {'failed':>7}"
    lines = [
        f"put from node A, get from node B; {data['nodes']} nodes per system in one process on 127.0.0.1; "
        f"median of {data['rounds']} rounds{gc_note}",
        f"values per mode: {per_mode}; latencies in ms; ours r = {data['replicas']['ours']}, kademlia k = 20",
        "",
        f"{'':22} {LABELS['tls']:^30}   {LABELS['plaintext']:^30}   {kademlia:^30}   {'TLS/kad':>7} {'plain/kad':>9} {'TLS/plain':>9}",
        f"{'size':>10} {'flight':>6} {'op':>3}  {header}   {header}   {header}",
    ]
    for entry in data["table"]:
        s, r = entry["systems"], entry["ratios"]
        lines.append(
            f"{describe_size(entry['size']):>10} {entry['in_flight']:>6} {entry['op']:>3}  {cells(s['tls'])}   {cells(s['plaintext'])}   {cells(s['kademlia'])}   "
            f"{times(r['tls_over_kademlia']):>7} {times(r['plaintext_over_kademlia']):>9} {times(r['tls_over_plaintext']):>9}"
        )
    lines.append("x/kad and TLS/plain: median of per-round ratios of ops/s; failed: failures/operations over all rounds")
    lines += render_notes(data)
    return lines


def render_notes(data: dict[str, Any]) -> list[str]:
    lines = [""]
    for check in data["bars"]:
        value = f"{check['value']:.2f}x" if "rate" in check["bar"] else f"{check['value']:.2f} ms"
        verdict = {True: "met", False: "MISSED", None: f"not comparable: {check.get('kademlia_failed', 0):.0%} of kademlia's gets failed"}[check["met"]]
        lines.append(f"bar (mutual TLS) {check['bar']}, {describe_size(check['size'])}, {check['in_flight']} in flight: {value} {verdict}")
    lines.append("")
    for entry in data["table"]:
        for system in SYSTEMS:
            summary = entry["systems"][system]
            if summary is not None and summary["failures"]:
                skipped = "".join([
                    f"; {summary['not_stored']} not tried: their put had failed" if summary["not_stored"] else "",
                    f"; {summary['not_attempted']} not tried after {max(GIVE_UP_AFTER, 3 * entry['in_flight'])} failures in a row" if summary["not_attempted"] else "",
                ])
                first = f"; first error: {summary['first_error'][:160]}" if summary["first_error"] else ""
                lines.append(f"{LABELS[system]}, {describe_size(entry['size'])}, {entry['in_flight']} in flight, {entry['op']}: "
                             f"{summary['failures']} of {summary['operations']} failed{skipped}{first}")
    lines += render_kademlia_network(data) + render_cpu(data) + render_on_cpu(data) + render_gc(data) + render_setup(data)
    if data["kademlia_background_errors"]:
        lines.append(f"kademlia's background tasks raised (counted, not logged): {data['kademlia_background_errors']}")
    if data["kademlia_note"]:
        lines.append(f"kademlia not (fully) measured: {data['kademlia_note']}")
    return lines


def render_kademlia_network(data: dict[str, Any]) -> list[str]:
    """How many of kademlia's gets its getter answered from its own copy, and the figures of the rest."""
    entries = [e for e in data["table"] if e["op"] == "get" and e["systems"]["kademlia"] and "getter_holds" in e["systems"]["kademlia"]]
    held = sum(e["systems"]["kademlia"]["getter_holds"] for e in entries)
    got = sum(e["systems"]["kademlia"]["operations"] - e["systems"]["kademlia"]["failures"] for e in entries)
    if not got:
        return []
    lines = ["", f"kademlia's getter held a copy of {held / got:.0%} of the values it got (k = 20 of {data['nodes']} servers) and answered those "
             "with no network call; its gets that needed the network, one in flight:"]
    for entry in entries:
        k, tls = entry["systems"]["kademlia"], entry["systems"]["tls"]
        if entry["in_flight"] != 1 or not k["network_gets"]:
            continue
        versus = f"; ours with TLS {tls['ops_per_s'] / k['network_ops_per_s_one_at_a_time']:.2f}x that" if tls else ""
        lines.append(f"  {describe_size(entry['size']):>10}: {k['network_gets']} gets, p50 {ms(k['network_p50_ms'])} p99 {ms(k['network_p99_ms'])} ms, "
                     f"{k['network_ops_per_s_one_at_a_time']:,.0f}/s one at a time{versus}")
    return lines


def render_cpu(data: dict[str, Any]) -> list[str]:
    """CPU time per operation: steadier than wall time on a shared machine."""
    columns = [(system, op) for system in SYSTEMS for op in OPERATIONS]
    lines = ["", "CPU time per operation in microseconds (the whole process: the client side and all 32 nodes; median per round)",
             f"{'size':>10} {'flight':>6}  " + " ".join(f"{system[:5] + ' ' + op:>11}" for system, op in columns)]
    for size in map(int, data["values_per_mode"]):  # JSON keys are strings
        for mode, width in data["in_flight"].items():
            row = {e["op"]: e["systems"] for e in data["table"] if e["size"] == size and e["mode"] == mode}
            figures = [row[op][system]["cpu_us_per_op"] if row[op][system] else None for system, op in columns]
            lines.append(f"{describe_size(size):>10} {width:>6}  " + " ".join(f"{cpu:>11,.0f}" if cpu is not None else f"{'-':>11}" for cpu in figures))
    return lines


def render_on_cpu(data: dict[str, Any]) -> list[str]:
    """One in flight, each operation's CPU time: its latency without the other tenants of a shared machine."""
    lines = ["", "one in flight, CPU time of each operation (ms; the latency an otherwise idle machine would show): p50 / p99 / p99 less the collector's share"]
    for entry in data["table"]:
        if entry["in_flight"] != 1:
            continue
        parts = []
        for system in SYSTEMS:
            s = entry["systems"][system]
            if s is not None and s["on_cpu_p50_ms"] is not None:
                parts.append(f"{system} {s['on_cpu_p50_ms']:.2f} / {s['on_cpu_p99_ms']:.2f} / {s['on_cpu_p99_without_gc_ms']:.2f}")
        lines.append(f"  {describe_size(entry['size']):>10} {entry['op']}  " + ";  ".join(parts))
    return lines


def render_gc(data: dict[str, Any]) -> list[str]:
    lines = ["", "garbage collection during the gets (median per round): gen-2 collections / total pause / longest pause"]
    for entry in data["table"]:
        if entry["op"] != "get":
            continue
        parts = []
        for system in SYSTEMS:
            s = entry["systems"][system]
            if s is not None:
                parts.append(f"{system} {s['gc_gen2_collections']:g} / {s['gc_pause_ms_total']:.1f} ms / {s['gc_pause_ms_max']:.1f} ms")
        lines.append(f"  {describe_size(entry['size']):>10} x{entry['in_flight']:<2}  " + ";  ".join(parts))
    return lines


def render_setup(data: dict[str, Any]) -> list[str]:
    lines = []
    for setup in data["setup"]["tls"] + data["setup"]["plaintext"]:
        if setup["fingers_right"] < 1.0:
            lines.append(f"note: a ring started measuring with {setup['fingers_right']:.1%} of its fingers right (after {FINGER_TIMEOUT:g} s more)")
    return lines


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_small", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=integer(1, MAX_ROUNDS), default=3, help="rounds per system; the report takes the median")
    parser.add_argument("--values", type=integer(1, MAX_VALUES), default=1000, help="values per mode of 1,024 B and of 8,000 B")
    parser.add_argument("--big-values", type=integer(1, MAX_VALUES), default=200, help="values per mode of 100,000 B")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 100 and 20 values")
    parser.add_argument("--ours-gc", choices=GC_MODES, default="default", help="our collector after the warm-up (default: as a node runs)")
    parser.add_argument("--lifetime", type=positive(7200), default=900.0, metavar="S", help="seconds a worker may take for one round")
    parser.add_argument("--json", action="store_true", help="print every figure as one JSON object")
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--pki", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker is not None:
        return worker_main(args)
    if args.quick:
        args.rounds, args.values, args.big_values = 1, 100, 20
    options = Options(args.rounds, args.values, args.big_values, args.ours_gc, args.lifetime)
    results, code = run_interruptibly("bench_small", lambda: run(options), (BenchError, OSError), "workers")
    if results is None:
        return code
    data = report(results, options)
    print(json.dumps(data, indent=2) if args.json else "\n".join(render(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
