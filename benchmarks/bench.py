"""Benchmarks: `make bench`, or `python benchmarks/bench.py [--quick] [--json FILE] [--readme F]`.

Every figure is printed beside its target from issue 14, with a pass/fail mark. What is
measured, and how:

- Per-event latency (µs, p50 and p99 over every event of a synthetic sample, 300 patients by
  default) of five implementations that make the same decisions: the engine's table runtime,
  its statechart runtime, and three baselines (`benchmarks/baselines.py`) that compile the
  guideline's criteria themselves and evaluate the same guards over their own facts: a plain
  dict table (the floor), python-statemachine and pytransitions. The baselines replay the
  machine events the engine sent (its trace) and pick every target with their own guards, then
  decide the actions (what to do next) of the state they are in with the same guards; after
  every event each implementation's state and actions are compared with the engine's ("results
  equal"). A sixth row, for continuity with the issue's first figures, is the floor deciding
  the state only (no actions); the targets are held to the floor that decides the actions.
  Each event is timed alone (`perf_counter_ns` around one step, the step's later
  events for the engine computed beforehand), whether or not it moves the machine; starting an
  episode is timed apart. One warm-up pass, then `--repeats` passes with the implementations
  in rotating order; a figure is the median of the passes, shown with their min-max. About half
  the events send no machine event (facts decided with the rest of their order set), so the
  times are bimodal: the mean is shown beside p50 and p99. On a shared machine the wall time
  of a long step includes other processes' time slices, so each pass is followed by one that
  reads the thread's CPU clock per patient (no clock read per event): the mean CPU time per
  event. Ratios are given on p50 and on the mean CPU time. The cost of the timing loop itself
  (an empty step) is shown too; it is in every per-event wall-time figure.
- Cohort replay: `iechs replay-cohort FILE.jsonl --workers 2` and `--workers 1` on a synthetic
  cohort (10,000 patients, streamed to a JSON Lines file as `iechs synth` writes it), parse plus
  decide, wall time of the child process; the peak RSS of the child (`os.wait4`: the largest
  of the process and its workers) and of the whole process tree (sampled from /proc).
- Start-up: `iechs run examples/day14-steroid-response.json`, wall time of the process.
- `iechs verify`: the proof timed in a child process without tracemalloc (after a warm-up
  run), the whole command's wall time, and its peak RSS.
- Audit cost: a sample of patients recorded in a fresh SQLite audit store (WAL, synchronous
  FULL) as `iechs run --store` does (one transaction per patient) and as a live episode does
  (one transaction per event); µs per event added over the same run without a store.
- Service: `benchmarks/service_bench.py --json FILE` when that script has the option.

The bench's own peak RSS (and its children's) and its wall time are reported against the
issue's ≤ 500 MB and ≤ 10 minutes; the cohort replay, the longest part, runs as many of its
repeats as fit in `--budget` (at least one per figure, and it says so). Timelines are streamed:
the per-event sample is the only cohort held in memory. `--quick`: 60 patients per event, a
cohort of 1,000, one replay each, fewer start-up and audit runs.

`--json FILE` writes every figure; `--readme FILE` puts the table between the lines
`<!-- bench:start -->` and `<!-- bench:end -->` of FILE (and says so when they are absent).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from baselines import (
    MEASURE,
    Floor,
    Plan,
    PsmBaseline,
    Step,
    TransitionsBaseline,
    agrees,
    engine_trace,
)

from iechs import Engine, Timeline, load_guideline, parse_timeline
from iechs.synthetic import synthetic_cohort
from iechs.timeline import Event

ROOT = Path(__file__).resolve().parents[1]
STARTED = time.perf_counter()
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
EXAMPLE = ROOT / "examples" / "day14-steroid-response.json"
#: the order of the sections in the printed table.
SECTIONS = (
    "per event",
    "episode start",
    "cohort replay",
    "start-up",
    "verify",
    "audit",
    "service",
    "the bench",
)


def progress(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of `values` (q in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_mb(kilobytes: float) -> float:
    """ru_maxrss (KiB on Linux) in MB."""
    return kilobytes * 1024 / 1e6


# --- figures ----------------------------------------------------------------------------------


class Figure(NamedTuple):
    """One measured figure: its runs (one or more), unit, and the target it is held to."""

    section: str
    name: str
    unit: str
    runs: tuple[float, ...]
    target: str = ""
    ok: bool | None = None
    note: str = ""
    #: the value as shown, when it is not one number (e.g. "51.9 -> 49.3 ms").
    shown: str = ""

    @property
    def value(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    @property
    def display(self) -> str:
        return self.shown or f"{_num(self.value)} {self.unit}".rstrip()

    @property
    def spread(self) -> str:
        if len(self.runs) < 2:
            return ""
        return f"{_num(min(self.runs))}–{_num(max(self.runs))}"

    @property
    def mark(self) -> str:
        return "" if self.ok is None else ("pass" if self.ok else "FAIL")

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "name": self.name,
            "unit": self.unit,
            "median": self.value if self.runs else None,
            "min": min(self.runs) if self.runs else None,
            "max": max(self.runs) if self.runs else None,
            "runs": list(self.runs),
            "target": self.target or None,
            "pass": self.ok,
            "note": self.note or None,
            "shown": self.shown or None,
        }


def _num(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


class Report:
    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self.meta: dict[str, Any] = {}

    def add(
        self,
        section: str,
        name: str,
        unit: str,
        runs: Sequence[float],
        *,
        at_most: float | None = None,
        at_least: float | None = None,
        target: str = "",
        ok: bool | None = None,
        note: str = "",
        shown: str = "",
    ) -> Figure:
        runs = tuple(runs)
        value = statistics.median(runs) if runs else float("nan")
        if not runs and not shown:
            shown, ok = "not measured", None
        if not runs and at_most is not None:
            target = target or f"≤ {_num(at_most)} {unit}"
        elif not runs and at_least is not None:
            target = target or f"≥ {_num(at_least)} {unit}"
        elif at_most is not None:
            ok = value <= at_most
            target = target or f"≤ {_num(at_most)} {unit}"
        elif at_least is not None:
            ok = value >= at_least
            target = target or f"≥ {_num(at_least)} {unit}"
        fig = Figure(section, name, unit, runs, target, ok, note, shown)
        self.figures.append(fig)
        print(f"    {self.line(fig)}", flush=True)
        return fig

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"    {text}", flush=True)

    @staticmethod
    def line(f: Figure) -> str:
        spread = f" ({f.spread})" if f.spread else ""
        target = f"  target {f.target}: {f.mark}" if f.target else ""
        note = f"  [{f.note}]" if f.note else ""
        return f"{f.name}: {f.display}{spread}{target}{note}"

    def ordered(self) -> list[Figure]:
        rank = {name: i for i, name in enumerate(SECTIONS)}
        return sorted(self.figures, key=lambda f: rank.get(f.section, len(rank)))

    def table(self) -> list[tuple[str, str, str, str, str]]:
        return [(f.name, f.display, f.spread, f.target, f.mark) for f in self.ordered()]

    def text(self) -> str:
        rows = [("figure", "median", "spread (min–max)", "target", ""), *self.table()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        out = []
        for r in rows:
            cells = [r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i]) for i in range(4)]
            out.append("  ".join([*cells, r[4]]).rstrip())
        return "\n".join(out + self.notes)

    def markdown(self) -> str:
        out = [
            "| figure | median | spread (min–max) | target | |",
            "|---|---:|---:|---|---|",
        ]
        out += [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in self.table()
        ]
        meta = self.meta
        out.append("")
        out.append(
            f"Measured by `make bench` ({meta.get('mode', 'full')} run) on "
            f"{meta.get('cores', '?')} cores; seed {meta.get('seed')}; "
            f"{meta.get('latency_events', '?')} events of {meta.get('latency_patients', '?')} "
            f"patients for the per-event figures, {meta.get('cohort_patients', '?')} patients "
            "for the cohort replay; load average "
            + " ".join(f"{x:.2f}" for x in meta.get("load_average", ()))
            + " at the start, "
            + " ".join(f"{x:.2f}" for x in meta.get("load_average_end", ()))
            + " at the end."
        )
        out += [f"{n}  " for n in self.notes]
        return "\n".join(out).rstrip()


# --- per-event latency ------------------------------------------------------------------------


class Sample(NamedTuple):
    timelines: list[Timeline]
    laters: list[list[tuple[Event, ...]]]
    steps: list[list[Step]]

    @property
    def events(self) -> int:
        return sum(len(s) for s in self.steps)


def load_sample(n: int, seed: int, engine: Engine, plan: Plan) -> Sample:
    """`n` synthetic patients, what a retrospective run knows follows each event (the engine's
    input besides the event), and the engine's trace (the baselines' input)."""
    g = engine.guideline
    timelines: list[Timeline] = []
    laters: list[list[tuple[Event, ...]]] = []
    steps: list[list[Step]] = []
    for doc in synthetic_cohort(n, seed):
        doc.pop("course")
        t = parse_timeline(doc, g)
        timelines.append(t)
        laters.append([engine.later(t.events, i) for i in range(len(t.events))])
        steps.append(engine_trace(engine, plan, t))
    return Sample(timelines, laters, steps)


class Pass(NamedTuple):
    """One timed pass of one implementation over the sample."""

    times: list[float]  # µs per event
    starts: list[float]  # µs per episode start
    mismatches: int


def engine_pass(engine: Engine, sample: Sample) -> Pass:
    times: list[float] = []
    starts: list[float] = []
    wrong = 0
    clock = time.perf_counter_ns
    for t, laters, steps in zip(sample.timelines, sample.laters, sample.steps, strict=True):
        t0 = clock()
        episode = engine.start(t.patient)
        starts.append((clock() - t0) / 1000)
        step = episode.step
        for event, later, expected in zip(t.events, laters, steps, strict=True):
            t0 = clock()
            d = step(event, later=later)
            times.append((clock() - t0) / 1000)
            codes = tuple(a.code for a in d.actions if a.code != MEASURE)
            if (
                episode.state != expected.target
                or codes != expected.actions
                or (len(codes) != len(d.actions)) != expected.measure
            ):
                wrong += 1
    return Pass(times, starts, wrong)


def baseline_pass(baseline: Floor | PsmBaseline | TransitionsBaseline, sample: Sample) -> Pass:
    times: list[float] = []
    starts: list[float] = []
    wrong = 0
    clock = time.perf_counter_ns
    actions = baseline.decides_actions
    for t, steps in zip(sample.timelines, sample.steps, strict=True):
        t0 = clock()
        episode = baseline.start(t.patient)
        starts.append((clock() - t0) / 1000)
        step = episode.step
        for s in steps:
            t0 = clock()
            step(s)
            times.append((clock() - t0) / 1000)
            if not agrees(episode, s, actions=actions):
                wrong += 1
    return Pass(times, starts, wrong)


def engine_cpu(engine: Engine, sample: Sample) -> float:
    """Thread CPU time per event (µs, mean) of stepping every event, with no clock read per
    event: unlike wall time, not inflated when other processes take the CPU."""
    total = 0
    clock = time.thread_time_ns
    for t, laters in zip(sample.timelines, sample.laters, strict=True):
        step = engine.start(t.patient).step
        t0 = clock()
        for event, later in zip(t.events, laters, strict=True):
            step(event, later=later)
        total += clock() - t0
    return total / 1000 / sample.events


def baseline_cpu(baseline: Floor | PsmBaseline | TransitionsBaseline, sample: Sample) -> float:
    """As `engine_cpu`, for a baseline."""
    total = 0
    clock = time.thread_time_ns
    for t, steps in zip(sample.timelines, sample.steps, strict=True):
        step = baseline.start(t.patient).step
        t0 = clock()
        for s in steps:
            step(s)
        total += clock() - t0
    return total / 1000 / sample.events


def clock_overhead(sample: Sample) -> list[float]:
    """The timing loop around a step that does nothing: what every per-event figure includes
    besides the step itself."""

    def step(s: Step) -> None:
        return None

    times: list[float] = []
    clock = time.perf_counter_ns
    for steps in sample.steps:
        for s in steps:
            t0 = clock()
            step(s)
            times.append((clock() - t0) / 1000)
    return times


def latency_section(report: Report, args: argparse.Namespace) -> None:
    progress(f"per-event latency: {args.latency_patients} synthetic patients, building traces")
    g = load_guideline()
    plan = Plan(g)
    table = Engine(g, runtime="table")
    statechart = Engine(g, runtime="statechart")
    sample = load_sample(args.latency_patients, args.seed, table, plan)
    n_events = sample.events
    report.meta["latency_patients"] = len(sample.timelines)
    report.meta["latency_events"] = n_events
    quiet = sum(1 for steps in sample.steps for s in steps if not s.hops)
    report.meta["latency_events_without_machine_event"] = quiet
    recorded = sum(1 for steps in sample.steps for s in steps if not s.decided)
    report.meta["latency_events_recorded_only"] = recorded
    floor, psm, pyt = Floor(plan), PsmBaseline(plan), TransitionsBaseline(plan)
    state_floor = Floor(plan, actions=False)
    runners: dict[str, Callable[[], Pass]] = {
        "engine, table runtime": lambda: engine_pass(table, sample),
        "engine, statechart runtime": lambda: engine_pass(statechart, sample),
        "python-statemachine with guards": lambda: baseline_pass(psm, sample),
        "pytransitions with guards": lambda: baseline_pass(pyt, sample),
        "plain dict table with guards (the floor)": lambda: baseline_pass(floor, sample),
        "plain dict table, state only (the issue's first floor)": lambda: baseline_pass(
            state_floor, sample
        ),
    }
    cpu_runners: dict[str, Callable[[], float]] = {
        "engine, table runtime": lambda: engine_cpu(table, sample),
        "engine, statechart runtime": lambda: engine_cpu(statechart, sample),
        "python-statemachine with guards": lambda: baseline_cpu(psm, sample),
        "pytransitions with guards": lambda: baseline_cpu(pyt, sample),
        "plain dict table with guards (the floor)": lambda: baseline_cpu(floor, sample),
        "plain dict table, state only (the issue's first floor)": lambda: baseline_cpu(
            state_floor, sample
        ),
    }
    names = list(runners)
    tb, sc, ps, pt, fl, fs = names
    progress(f"per-event latency: {n_events} events; warm-up pass")
    failed: dict[str, str] = {}
    for name in names:
        try:
            runners[name]()
        except Exception as exc:  # an implementation that fails is reported, not measured
            failed[name] = f"{type(exc).__name__}: {exc}"
            report.note(f"{name}: failed in the warm-up pass ({failed[name]}): not measured")
    names = [n for n in names if n not in failed]
    passes: dict[str, list[Pass]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        progress(f"per-event latency: pass {r + 1} of {args.repeats}")
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: spread the noise
        for name in order:
            gc.collect()
            passes[name].append(runners[name]())
            gc.collect()
            cpu[name].append(cpu_runners[name]())

    p50 = {n: [percentile(p.times, 0.5) for p in passes[n]] for n in names}
    p99 = {n: [percentile(p.times, 0.99) for p in passes[n]] for n in names}
    mean = {n: [statistics.fmean(p.times) for p in passes[n]] for n in names}
    sec = "per event"
    for n in names:
        report.add(
            sec, f"{n}, p50", "µs", p50[n], at_most=args.table_target_us if n == tb else None
        )
    for n in names:
        report.add(sec, f"{n}, p99", "µs", p99[n])
    for n in names:
        report.add(sec, f"{n}, mean", "µs", mean[n])
    for n in names:
        report.add(sec, f"{n}, mean CPU time", "µs", cpu[n])

    ratios = (
        ("table runtime ÷ floor", tb, fl, 2.5),
        ("table runtime ÷ pytransitions", tb, pt, None),
        ("table runtime ÷ python-statemachine", tb, ps, None),
        ("statechart runtime ÷ python-statemachine", sc, ps, 1.5),
        ("statechart runtime ÷ floor", sc, fl, None),
        ("python-statemachine ÷ floor", ps, fl, None),
        ("pytransitions ÷ floor", pt, fl, None),
        ("table runtime ÷ state-only floor", tb, fs, None),
    )
    for label, q in (("p50", p50), ("mean CPU time", cpu)):
        for what, a, b, limit in ratios:
            if a in q and b in q:
                runs = [x / y for x, y in zip(q[a], q[b], strict=True)]
                report.add(sec, f"{what} ({label})", "×", runs, at_most=limit)
    # The p50 of all events falls where the two modes meet; within each mode the ratio is
    # steady (shown, without a target, beside the target's figure).
    decided_mask = [s.decided for steps in sample.steps for s in steps]

    def mode_p50(p: Pass, want: bool) -> float:
        return percentile([t for t, d in zip(p.times, decided_mask, strict=True) if d is want], 0.5)

    if tb in passes and fl in passes:
        for label, want in (
            ("events whose actions are decided", True),
            ("events only recorded", False),
        ):
            runs = [
                mode_p50(a, want) / mode_p50(b, want)
                for a, b in zip(passes[tb], passes[fl], strict=True)
            ]
            report.add(sec, f"table runtime ÷ floor (p50 of the {label})", "×", runs)
    for n in names:
        report.add(
            "episode start",
            f"start an episode, {n}",
            "µs",
            [statistics.median(p.starts) for p in passes[n]],
        )
    report.add(
        sec,
        "clock and loop overhead (an empty step), included in every figure, p50",
        "µs",
        [percentile(clock_overhead(sample), 0.5) for _ in range(args.repeats)],
    )
    wrong = {n: sum(p.mismatches for p in passes[n]) for n in names}
    checked = n_events * args.repeats
    total = sum(wrong.values())
    report.meta["failed"] = failed
    report.meta["mismatches"] = wrong
    report.meta["events_checked_per_implementation"] = checked
    detail = ", ".join(f"{n}: {w}" for n, w in wrong.items() if w)
    report.note(
        f"{quiet / n_events:.0%} of the events send no machine event: {recorded / n_events:.0%} "
        "only record facts and keep the previous actions (a fact whose order set is decided at "
        "its last fact, a value before the infusion), the others are doses for another "
        "indication, whose actions are decided. The per-event times are bimodal, so a p50 can "
        "fall between the modes; the means weigh both."
    )
    equal = "yes" if total == 0 and not failed else "no"
    report.note(
        f"results equal: {equal} ({total} mismatches; after each of "
        f"{n_events} events x {args.repeats} passes, every implementation's state and actions "
        "against the engine's: the action codes in order, and a `measure` action wherever a "
        "baseline lists one (an action whose criteria are UNKNOWN); the state-only floor: its "
        "state only"
        f"{'; ' + detail if detail else ''}"
        + (f"; not compared, failed: {', '.join(failed)}" if failed else "")
        + ")"
    )


# --- child processes --------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            found += [int(x) for x in text.split()]
    except OSError:
        pass
    return found


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class TreeSampler:
    """Samples the summed RSS of a process and its descendants every 50 ms (Linux /proc)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            pids, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                pids.append(p)
                todo += _children(p)
            self.peak_kb = max(self.peak_kb, sum(_rss_kb(p) for p in pids))
            self.done.wait(0.05)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return rss_mb(self.peak_kb)


class ChildRun(NamedTuple):
    seconds: float
    returncode: int
    maxrss_mb: float  # the largest RSS of the child or of a descendant it reaped
    tree_mb: float  # the largest summed RSS of the process tree, sampled
    output: str


def run_child(
    args: Sequence[str],
    *,
    sample: bool = False,
    timeout: float = 900,
    env: dict[str, str] | None = None,
) -> ChildRun:
    """Run a command, wall time from spawn to exit; its rusage from `os.wait4`."""
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        sampler = TreeSampler(proc.pid) if sample else None
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        tree = sampler.stop() if sampler else 0.0
        log.seek(0)
        output = log.read().decode("utf-8", "replace")
    return ChildRun(seconds, proc.returncode, rss_mb(usage.ru_maxrss), tree, output)


def tail(output: str, lines: int = 2) -> str:
    """The last lines of a failed command's output (a traceback's last frame and error)."""
    return " | ".join(line.strip() for line in output.strip().splitlines()[-lines:])


def iechs_command() -> list[str]:
    script = Path(sys.executable).with_name("iechs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "iechs"]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- cohort replay ----------------------------------------------------------------------------


def cohort_section(report: Report, args: argparse.Namespace, tmp: Path, deadline: float) -> None:
    n = args.patients
    progress(f"cohort replay: writing {n} synthetic patients to a JSON Lines file")
    src = tmp / "cohort.jsonl"
    events = 0
    with src.open("w", encoding="utf-8") as fh:
        for doc in synthetic_cohort(n, args.seed):
            doc.pop("course")
            events += len(doc["events"])
            fh.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    report.meta["cohort_patients"] = n
    report.meta["cohort_events"] = events
    sec = "cohort replay"
    scaled = n != 10_000
    digests: dict[int, str] = {}
    seconds: dict[int, list[float]] = {2: [], 1: []}
    maxrss: dict[int, list[float]] = {2: [], 1: []}
    tree: dict[int, list[float]] = {2: [], 1: []}
    failed: set[int] = set()
    # 2 workers then 1, then again while the runs fit in the time left (the bench's budget)
    plan = [w for _ in range(args.cohort_repeats) for w in (2, 1)]
    for i, workers in enumerate(plan):
        if workers in failed:
            continue
        done = seconds[workers]
        if done:
            expected = max(done)
        elif seconds[2]:
            expected = 2.2 * max(seconds[2])  # one worker: about twice two
        else:
            expected = 0.0
        if i >= 2 and time.perf_counter() + expected > deadline:
            report.note(
                f"cohort replay: {len(seconds[2])} run(s) with 2 workers and {len(seconds[1])} "
                f"with 1 instead of {args.cohort_repeats}, to stay within the bench's "
                f"{args.budget:.0f} s budget"
            )
            break
        progress(
            f"cohort replay: {n} patients ({events} events), {workers} worker(s), "
            f"run {len(done) + 1} of {args.cohort_repeats}"
        )
        out = tmp / f"out-{workers}.jsonl"
        out.unlink(missing_ok=True)  # the output is resumable: start afresh
        run = run_child(
            [
                *iechs_command(),
                "replay-cohort",
                str(src),
                "--workers",
                str(workers),
                "--out",
                str(out),
                "--no-progress",
            ],
            sample=True,
            env=installed(tmp),
        )
        if run.returncode != 0:
            failed.add(workers)
            report.note(
                f"replay-cohort --workers {workers} failed (exit {run.returncode}): "
                + tail(run.output)
            )
            continue
        done.append(run.seconds)
        maxrss[workers].append(run.maxrss_mb)
        tree[workers].append(run.tree_mb)
        digests[workers] = file_digest(out)
        out.unlink()
    for workers in (2, 1):
        limit = 10.0 * n / 10_000 if workers == 2 else None
        report.add(
            sec,
            f"replay-cohort {n} patients, parse + decide, {workers} worker(s)",
            "s",
            seconds[workers],
            at_most=limit,
            note="target scaled to the cohort size" if scaled and limit else "",
        )
        report.add(
            sec,
            f"  events per second, {workers} worker(s)",
            "/s",
            [events / x for x in seconds[workers]],
        )
        report.add(
            sec,
            f"  peak RSS of one process, {workers} worker(s)",
            "MB",
            maxrss[workers],
            at_most=500,
        )
        report.add(
            sec,
            f"  peak RSS of the process tree (summed), {workers} worker(s)",
            "MB",
            tree[workers],
            at_most=500,
        )
    if len(digests) == 2:
        report.note(
            "replay-cohort output identical with 1 and 2 workers: "
            + ("yes" if digests[1] == digests[2] else "no")
        )
    src.unlink()


# --- start-up, verify -------------------------------------------------------------------------


def installed(tmp: Path) -> dict[str, str]:
    """The environment of a command run as an installed package runs: bytecode cached (a
    sandbox may set PYTHONDONTWRITEBYTECODE, which compiles every module on every run), and a
    guideline cache of its own."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    env["IECHS_CACHE_DIR"] = str(tmp / "guideline-cache")
    return env


def startup_section(report: Report, args: argparse.Namespace, tmp: Path) -> None:
    progress(f"start-up: `iechs run {EXAMPLE.relative_to(ROOT)}`, {args.startup_runs} runs")
    env = installed(tmp)
    for label, extra in (
        ("statechart runtime, the default", []),
        ("--runtime table", ["--runtime", "table"]),
    ):
        cmd = [*iechs_command(), "run", *extra, str(EXAMPLE)]
        run_child(cmd, env=env)  # warm-up: the page cache, .pyc files, the guideline cache
        runs = []
        for _ in range(args.startup_runs):
            r = run_child(cmd, env=env)
            if r.returncode != 0:
                report.note(f"iechs run failed (exit {r.returncode}): {tail(r.output)}")
                return
            runs.append(r.seconds * 1000)
        report.add(
            "start-up", f"iechs run, one example, {label} (whole process)", "ms", runs, at_most=200
        )
    bare = [run_child([sys.executable, "-c", "pass"]).seconds * 1000 for _ in range(3)]
    report.add("start-up", "  python -c pass (for scale)", "ms", bare)
    # What `iechs run` imports besides iechs and the standard library (the table runtime does
    # not import python-statemachine): a floor no change to iechs can go below.
    for label, modules in (
        ("statechart runtime", "attrs, msgspec, rich.console, rich.table, statemachine"),
        ("table runtime", "attrs, msgspec, rich.console, rich.table"),
    ):
        cmd = [sys.executable, "-c", f"import {modules}"]
        run_child(cmd, env=env)
        runs = [run_child(cmd, env=env).seconds * 1000 for _ in range(args.startup_runs)]
        report.add("start-up", f"  its dependencies' import alone, {label} (for scale)", "ms", runs)


_VERIFY_CODE = """
import json, sys, time
from iechs import load_guideline
from iechs.verify import verify
g = load_guideline()
runs = []
for _ in range(int(sys.argv[1]) + 1):
    t = time.perf_counter()
    report = verify(g)
    runs.append(time.perf_counter() - t)
print(json.dumps({"runs": runs[1:], "first": runs[0], "ok": bool(report.ok)}))
"""


def verify_section(report: Report, args: argparse.Namespace) -> None:
    progress("iechs verify: the proof in a child process, without tracemalloc")
    sec = "verify"
    r = run_child([sys.executable, "-c", _VERIFY_CODE, str(args.verify_runs)])
    if r.returncode != 0:
        report.note(f"verify failed (exit {r.returncode}): {tail(r.output)}")
        return
    data = json.loads(r.output.strip().splitlines()[-1])
    report.add(
        sec,
        "verify(), bundled guideline, after a warm-up run",
        "ms",
        [x * 1000 for x in data["runs"]],
    )
    report.add(sec, "  verify(), the first run in a process", "ms", [data["first"] * 1000])
    cli = [run_child([*iechs_command(), "verify"]) for _ in range(3)]
    report.add("verify", "iechs verify (whole process)", "ms", [c.seconds * 1000 for c in cli])
    report.add("verify", "  iechs verify, peak RSS", "MB", [c.maxrss_mb for c in cli])
    if not data["ok"] or any(c.returncode != 0 for c in cli):
        report.note("verify did not prove the bundled guideline (see `iechs verify`)")


# --- audit ------------------------------------------------------------------------------------


def audit_section(report: Report, args: argparse.Namespace, tmp: Path) -> None:
    from iechs.audit import RecordedEpisode, SqliteStore

    progress(f"audit cost: {args.audit_patients} patients into a SQLite audit store")
    g = load_guideline()
    engine = Engine(g, runtime="table")
    timelines = []
    for doc in synthetic_cohort(args.audit_patients, args.seed + 1):
        doc.pop("course")
        timelines.append(parse_timeline(doc, g))
    events = sum(len(t.events) for t in timelines)
    live = timelines[: args.audit_live_patients]
    live_events = sum(len(t.events) for t in live)
    plain_runs, batch_runs, plain_live, live_runs = [], [], [], []
    for r in range(args.repeats):
        gc.collect()
        t0 = time.perf_counter()
        for t in timelines:
            engine.run(t)
        plain_runs.append(time.perf_counter() - t0)
        with SqliteStore(tmp / f"batch-{r}.db", create=True) as store:
            gc.collect()
            t0 = time.perf_counter()
            for t in timelines:
                RecordedEpisode.start(engine, store, t.patient).step_all(t.events)
            batch_runs.append(time.perf_counter() - t0)
        gc.collect()
        t0 = time.perf_counter()
        for t in live:
            episode = engine.start(t.patient)
            for i, event in enumerate(t.events):
                episode.step(event, later=engine.later(t.events, i))
        plain_live.append(time.perf_counter() - t0)
        with SqliteStore(tmp / f"live-{r}.db", create=True) as store:
            gc.collect()
            t0 = time.perf_counter()
            for t in live:
                recorded = RecordedEpisode.start(engine, store, t.patient)
                for i, event in enumerate(t.events):
                    recorded.step(event, later=engine.later(t.events, i))
            live_runs.append(time.perf_counter() - t0)
    sec = "audit"
    report.add(
        sec,
        f"audit log, a transaction per patient (iechs run --store), added per event "
        f"({events} events)",
        "µs",
        [(b - p) / events * 1e6 for b, p in zip(batch_runs, plain_runs, strict=True)],
    )
    report.add(
        sec,
        f"audit log, a transaction per event (a live episode), added per event "
        f"({live_events} events)",
        "µs",
        [(b - p) / live_events * 1e6 for b, p in zip(live_runs, plain_live, strict=True)],
    )


# --- service ----------------------------------------------------------------------------------


def service_section(report: Report, args: argparse.Namespace, tmp: Path) -> None:
    script = ROOT / "benchmarks" / "service_bench.py"
    progress("service: benchmarks/service_bench.py")
    if not script.exists():
        report.note("service: not measured (benchmarks/service_bench.py is missing)")
        return
    helped = run_child([sys.executable, str(script), "--help"], timeout=60)
    if helped.returncode != 0 or "--json" not in helped.output:
        report.note("service: not measured (service_bench.py has no --json option yet)")
        return
    out = tmp / "service.json"
    cmd = [sys.executable, str(script), "--json", str(out)]
    if "--quick" in helped.output:
        cmd.append("--quick")  # its full run takes longer than this bench's whole budget
    r = run_child(cmd, timeout=args.service_timeout)
    if r.returncode != 0 or not out.exists():
        report.note(f"service: not measured (exit {r.returncode}): {tail(r.output)}")
        return
    data = json.loads(out.read_text())
    report.meta["service"] = data
    targets = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(targets, list) or not targets:
        report.note(f"service: measured, no targets list in its JSON (see {args.json or '--json'})")
        return
    quick = " (service_bench.py --quick)" if "--quick" in cmd else ""
    for item in targets:
        if not isinstance(item, dict) or "target" not in item:
            continue
        met = item.get("met")
        value = item.get("value")
        runs = (
            [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []
        )
        what, _, goal = str(item["target"]).rpartition(": ")
        goal = goal.replace("<=", "≤").replace(">=", "≥")
        unit = "ms" if " ms" in goal else "/s" if "/s" in goal else ""
        report.add(
            "service",
            f"service{quick}, {what or 'figure'}",
            unit,
            runs,
            target=goal,
            ok=met if isinstance(met, bool) else None,
            shown="" if runs else str(value),
        )


# --- main -------------------------------------------------------------------------------------


def replace_readme(path: Path, markdown: str) -> str:
    """Put `markdown` between the bench markers of the file; say what was done."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == README_START)
        end = next(i for i, line in enumerate(lines) if line.strip() == README_END and i > start)
    except StopIteration:
        return f"{path}: no {README_START} / {README_END} lines: not updated"
    new = [*lines[: start + 1], "", markdown, "", *lines[end:]]
    path.write_text("\n".join(new), encoding="utf-8")
    return f"{path}: the table between the bench markers is replaced"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer patients and runs, to try it")
    parser.add_argument("--patients", type=int, help="cohort replay size (default 10,000)")
    parser.add_argument("--latency-patients", type=int, help="per-event sample (default 300)")
    parser.add_argument("--repeats", type=int, help="timed passes after the warm-up (default 3)")
    parser.add_argument("--cohort-repeats", type=int, help="runs per replay figure (default 3)")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument(
        "--budget",
        type=float,
        default=600.0,
        help="seconds the whole bench may take (default 600): the cohort replay runs fewer "
        "repeats when more would not fit",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="skip a section: latency, cohort, startup, verify, audit, service (repeatable)",
    )
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--readme", help="replace the table between the bench markers of FILE")
    args = parser.parse_args(argv)
    quick = args.quick
    args.patients = args.patients or (1000 if quick else 10_000)
    args.latency_patients = args.latency_patients or (60 if quick else 300)
    args.repeats = args.repeats or 3
    args.cohort_repeats = args.cohort_repeats or (1 if quick else 3)
    args.startup_runs = 3 if quick else 5
    args.verify_runs = 3 if quick else 5
    args.audit_patients = 10 if quick else 50
    args.audit_live_patients = 3 if quick else 10
    args.service_timeout = 300.0
    args.service_reserve = 130.0  # service_bench.py --quick: "under 90 s", and its start-up
    args.table_target_us = 10.0

    report = Report()
    report.meta.update(
        mode="quick" if quick else "full",
        seed=args.seed,
        cores=os.cpu_count(),
        python=sys.version.split()[0],
        load_average=os.getloadavg(),
    )
    progress(
        f"iechs benchmarks ({report.meta['mode']} run), {os.cpu_count()} cores, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    # the cohort replay runs as many repeats as fit, leaving time for the service bench
    reserve = 0.0 if "service" in args.skip else args.service_reserve
    cohort_deadline = STARTED + args.budget - reserve - 15
    with tempfile.TemporaryDirectory(prefix="iechs-bench-") as folder:
        tmp = Path(folder)
        sections: list[tuple[str, Callable[[], None]]] = [
            ("latency", lambda: latency_section(report, args)),
            ("startup", lambda: startup_section(report, args, tmp)),
            ("verify", lambda: verify_section(report, args)),
            ("audit", lambda: audit_section(report, args, tmp)),
            ("cohort", lambda: cohort_section(report, args, tmp, cohort_deadline)),
            ("service", lambda: service_section(report, args, tmp)),
        ]
        for name, run in sections:
            if name in args.skip:
                report.note(f"{name}: skipped (--skip {name})")
                continue
            try:
                run()
            except Exception as exc:  # one broken section does not hide the others
                report.note(f"{name}: failed ({type(exc).__name__}: {exc})")
            gc.collect()

    wall = time.perf_counter() - STARTED
    self_rss = rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    child_rss = rss_mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    progress("done")
    report.add("the bench", "bench wall time", "s", [wall], at_most=600)
    report.add("the bench", "bench peak RSS, this process", "MB", [self_rss], at_most=500)
    report.add("the bench", "bench peak RSS, largest child process", "MB", [child_rss], at_most=500)
    report.meta["load_average_end"] = os.getloadavg()
    print()
    print(report.text(), flush=True)
    if args.json:
        doc = {
            "meta": report.meta,
            "figures": [f.to_json() for f in report.ordered()],
            "notes": report.notes,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(f"figures written to {args.json}")
    if args.readme:
        print(replace_readme(Path(args.readme), report.markdown()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
