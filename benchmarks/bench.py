"""Benchmarks: `make bench` (or `python benchmarks/bench.py [--patients N]`).

Prints a table of figures, each beside its baseline measured in the same run on the same event
sequences: a bare python-statemachine chart with the guideline's states and transitions (guards
that only replay the engine's choice), and pytransitions with the same. The ratio is the
headline. Workloads: per-event decision latency (p50, p99), a synthetic cohort (10,000 patients,
about 60 events over 30 days each, seeded), `iechs verify`, import and CLI start-up time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iechs import Engine, Timeline, load_guideline, parse_timeline
from iechs.synthetic import synthetic_cohort

ROOT = Path(__file__).resolve().parents[1]
Trace = list[tuple[str, str]]  # (machine event, state after) per event that sends one


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cohort(n: int, seed: int) -> list[Timeline]:
    g = load_guideline()
    out = []
    for doc in synthetic_cohort(n, seed):
        doc.pop("course")
        out.append(parse_timeline(doc, g))
    return out


def traces(engine: Engine, timelines: list[Timeline]) -> list[Trace]:
    """What the engine sent to the chart and where it went: the baselines replay this."""
    out = []
    for t in timelines:
        ep = engine.run(t)
        out.append([(d.machine_event, d.target) for d in ep.decisions if d.machine_event])
    return out


# --- baselines -------------------------------------------------------------------------------


def bare_statemachine() -> Callable[[], Any]:
    """The same states and transitions in a bare python-statemachine chart."""
    from statemachine.io.class_factory import create_machine_class_from_definition

    g = load_guideline()
    states: dict[str, Any] = {}
    for sid, s in g.states.items():
        on: dict[str, list[dict[str, Any]]] = {}
        for t in s.transitions:
            target = t.to
            on.setdefault(t.event, []).append(
                {"target": target, "cond": (lambda to, _t=target: to == _t)}
            )
        states[sid] = {"initial": s.initial, "final": s.final, **({"on": on} if on else {})}
    return create_machine_class_from_definition(
        "Bare", states=states, allow_event_without_transition=True
    )


def pytransitions_machine() -> Callable[[], Any]:
    from transitions import Machine

    g = load_guideline()
    spec = [
        {
            "trigger": t.event,
            "source": sid,
            "dest": t.to,
            "conditions": (lambda ev, _t=t.to: ev.kwargs["to"] == _t),
        }
        for sid, s in g.states.items()
        for t in s.transitions
    ]

    def make() -> Any:
        return Machine(
            states=list(g.states),
            transitions=spec,
            initial=g.initial_state,
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=True,
        )

    return make


def run_bare(make: Callable[[], Any], trace: Trace) -> None:
    m = make()
    for event, to in trace:
        m.send(event, to=to)


def run_pytransitions(make: Callable[[], Any], trace: Trace) -> None:
    m = make()
    for event, to in trace:
        m.trigger(event, to=to)


# --- measurements ----------------------------------------------------------------------------


def latency(engine: Engine, timelines: list[Timeline]) -> list[float]:
    out = []
    for t in timelines:
        ep = engine.start(t.patient)
        for event in t.events:
            t0 = time.perf_counter_ns()
            ep.step(event)
            out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def latency_baseline(make: Callable[[], Any], send: str, all_traces: list[Trace]) -> list[float]:
    out = []
    for trace in all_traces:
        m = make()
        fire = getattr(m, send)
        for event, to in trace:
            t0 = time.perf_counter_ns()
            fire(event, to=to)
            out.append((time.perf_counter_ns() - t0) / 1000)
    return out


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def command_seconds(args: list[str], repeat: int = 5) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def verify_figures() -> tuple[float, float, float]:
    """Seconds, peak Python allocation of the proof (MiB) and peak RSS of the process (MiB).

    The RSS is VmHWM from /proc (reset at exec; ru_maxrss would report the parent's peak)."""
    code = (
        "import time, tracemalloc; from iechs import load_guideline; "
        "from iechs.verify import verify; g = load_guideline(structural=False); "
        "tracemalloc.start(); t = time.perf_counter(); r = verify(g); "
        "s = time.perf_counter() - t; peak = tracemalloc.get_traced_memory()[1]; "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
        "print(s, peak, hwm.split()[1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), float(out[1]) / 2**20, float(out[2]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--latency-patients", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    rows: list[tuple[str, str, str, str]] = []
    figures: dict[str, float] = {}

    def row(name: str, value: float, unit: str, base: float | None, base_name: str) -> None:
        figures[name] = value
        ratio = f"{value / base:.2f}x {base_name}" if base else ""
        shown = f"{base:.1f} {unit}" if base is not None else ""
        rows.append((name, f"{value:.1f} {unit}", shown, ratio))

    statechart = Engine(runtime="statechart")
    table = Engine(runtime="table")
    sample = cohort(args.latency_patients, args.seed)
    sample_traces = traces(table, sample)
    bare, pyt = bare_statemachine(), pytransitions_machine()

    lat_sc = latency(statechart, sample)
    lat_tb = latency(table, sample)
    lat_bare = latency_baseline(bare, "send", sample_traces)
    lat_pyt = latency_baseline(pyt, "trigger", sample_traces)
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        base = percentile(lat_bare, q)
        row(
            f"step latency {label}, statechart runtime",
            percentile(lat_sc, q),
            "us",
            base,
            "bare p-s-m",
        )
        row(f"step latency {label}, table runtime", percentile(lat_tb, q), "us", base, "bare p-s-m")
        row(
            f"step latency {label}, pytransitions baseline",
            percentile(lat_pyt, q),
            "us",
            base,
            "bare p-s-m",
        )
    try:
        from iechs.audit import bench_hooks  # type: ignore[attr-defined]
    except ImportError:
        bench_hooks = None
    if bench_hooks is not None:
        lat_audit = bench_hooks.latency_with_audit(table, sample)
        row(
            "step latency p50, table + SQLite audit log",
            percentile(lat_audit, 0.5),
            "us",
            percentile(lat_tb, 0.5),
            "no log",
        )

    timelines = cohort(args.patients, args.seed)
    n_events = sum(len(t.events) for t in timelines)
    all_traces = traces(table, timelines)
    t_table = timed(lambda: [table.run(t) for t in timelines])
    t_sc = timed(lambda: [statechart.run(t) for t in timelines])
    t_bare = timed(lambda: [run_bare(bare, tr) for tr in all_traces])
    t_pyt = timed(lambda: [run_pytransitions(pyt, tr) for tr in all_traces])
    n = len(timelines)
    row(
        "cohort, 1 process, table runtime (episodes/s)", n / t_table, "/s", n / t_bare, "bare p-s-m"
    )
    row(
        "cohort, 1 process, statechart runtime (episodes/s)",
        n / t_sc,
        "/s",
        n / t_bare,
        "bare p-s-m",
    )
    row(
        "cohort, 1 process, pytransitions baseline (episodes/s)",
        n / t_pyt,
        "/s",
        n / t_bare,
        "bare p-s-m",
    )

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "cohort.jsonl"
        with src.open("w") as fh:
            for doc in synthetic_cohort(args.patients, args.seed):
                doc.pop("course")
                fh.write(json.dumps(doc) + "\n")
        cli = [sys.executable, "-m", "iechs", "replay-cohort", str(src), "--no-progress"]
        one = timed(
            lambda: subprocess.run(
                [*cli, "--workers", "1", "--out", str(Path(tmp) / "r1.jsonl")],
                check=True,
                capture_output=True,
            )
        )
        two = timed(
            lambda: subprocess.run(
                [*cli, "--workers", "2", "--out", str(Path(tmp) / "r2.jsonl")],
                check=True,
                capture_output=True,
            )
        )
        same = (Path(tmp) / "r1.jsonl").read_bytes() == (Path(tmp) / "r2.jsonl").read_bytes()
    row(f"replay-cohort {n} patients, parse + decide, 2 workers (s)", two, "s", one, "1 worker")

    v_seconds, v_alloc, v_rss = verify_figures()
    row("iechs verify, bundled guideline (ms)", v_seconds * 1000, "ms", None, "")
    row("iechs verify, peak allocation of the proof (MiB)", v_alloc, "MiB", None, "")
    row("iechs verify, peak RSS of the process (MiB)", v_rss, "MiB", None, "")
    bare_python = command_seconds([sys.executable, "-c", "pass"])
    imp = command_seconds([sys.executable, "-c", "import iechs"]) - bare_python
    helps = command_seconds([sys.executable, "-m", "iechs", "--help"])
    row("import iechs (ms, beyond python start-up)", imp * 1000, "ms", None, "")
    row(
        "iechs --help (ms, whole process)", helps * 1000, "ms", bare_python * 1000, "python -c pass"
    )

    print(
        f"iechs benchmarks — {n} patients, {n_events} events "
        f"({n_events / n:.1f} per patient), seed {args.seed}, {os.cpu_count()} cores"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>12}  {'baseline':>12}  ratio")
    for name, value, base, ratio in rows:
        print(f"{name:<{width}}  {value:>12}  {base:>12}  {ratio}")
    print(f"replay-cohort output identical with 1 and 2 workers: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
