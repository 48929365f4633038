"""`iechs replay-cohort --executor dask`: the same replay, on a Dask distributed cluster.

This process (the client) reads the input and writes the output, in input order; workers only
replay. What a worker gets:

- once per worker: a `GuidelineShipment`, the parsed and checked guideline model pickled, a
  profile already merged over its base, so no file is read on a worker (the guideline need
  not exist there; iechs must, in the same version: checked before the first task, and again
  by each worker). It is the result of a first task, which the scheduler can run again if
  every worker holding it is lost (scattered data could not be recomputed);
- per task: a partition of `--partition-size` (key, timeline JSON text) items, the text as read
  from the input; it sends back their summaries (`iechs.outcomes`), in order.

Each worker process builds its engine once per guideline (a cache keyed by the shipment's
sha256). At most two partitions per worker thread are in flight (a sliding window over the
input, refilled as the oldest partition comes back), so the client, the scheduler and the
workers hold a bounded amount of data however large the cohort is.
"""

# ruff: noqa: PLC0415
# (dask is imported inside functions: without it, this module still loads and the command says
# what to install; the worker side needs none of it)

from __future__ import annotations

import argparse
import hashlib
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .cohort import Summary, replay_with

if TYPE_CHECKING:
    from .engine import Engine
    from .model import Guideline

__all__ = [
    "GuidelineShipment",
    "WorkerMismatchError",
    "connect",
    "replay",
    "replay_partition",
    "ship",
]


@dataclass(frozen=True)
class GuidelineShipment:
    """The guideline as a worker gets it: the parsed and checked model, pickled.

    A profile is already merged over its base, so no file is read on a worker. `sha256` (of
    `model`) keys the per-process engine cache; `version` is the sender's iechs version, since
    a pickled model is only read back by the same code."""

    sha256: str
    runtime: str
    version: str
    model: bytes


class WorkerMismatchError(RuntimeError):
    """A worker runs another iechs version than the client (one message: it pickles)."""


def ship(guideline: Guideline, runtime: str) -> GuidelineShipment:
    """What the workers need to replay with `guideline` (loaded and checked by the client)."""
    import pickle

    from ._version import __version__

    model = pickle.dumps(guideline, protocol=pickle.HIGHEST_PROTOCOL)
    return GuidelineShipment(hashlib.sha256(model).hexdigest(), runtime, __version__, model)


_ENGINES: dict[tuple[str, str], Engine] = {}  # per worker process: (sha256, runtime) -> engine
_ENGINES_LOCK = threading.Lock()  # a worker may run several threads
#: engines a worker keeps (clients replaying other guidelines may share a cluster).
_ENGINES_KEPT = 4


def _engine_for(shipment: GuidelineShipment) -> Engine:
    key = (shipment.sha256, shipment.runtime)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            import pickle

            from ._version import __version__
            from .engine import Engine

            if shipment.version != __version__:
                raise WorkerMismatchError(
                    f"this worker has iechs {__version__}, the client {shipment.version}: "
                    "install the same version on every worker"
                )
            guideline = pickle.loads(shipment.model)  # sent by our own client, as any Dask task is
            engine = Engine(guideline, runtime=shipment.runtime)  # type: ignore[arg-type]
            if len(_ENGINES) >= _ENGINES_KEPT:
                del _ENGINES[next(iter(_ENGINES))]  # the oldest
            _ENGINES[key] = engine
    return engine


def replay_partition(shipment: GuidelineShipment, items: list[tuple[str, str]]) -> list[Summary]:
    """A Dask task: replay a partition of timelines, in order, with this process's engine."""
    engine = _engine_for(shipment)
    return [replay_with(engine, item) for item in items]


def _guideline(shipment: GuidelineShipment) -> GuidelineShipment:
    return shipment


def _worker_version() -> str:
    from ._version import __version__

    return __version__


def _batches(items: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    batch: list[tuple[str, str]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- the client side ---------------------------------------------------------------------------


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[Any]:
    """A `distributed.Client` on the scheduler, or on a LocalCluster made (and closed) here."""
    from .errors import IechsError, Problem
    from .extras import require

    require("cluster")  # dask, distributed: `pip install 'iechs[cluster]'`
    import distributed as _distributed

    distributed: Any = _distributed  # Client and LocalCluster are untyped
    if args.scheduler is None:
        import logging
        import warnings

        import dask

        # Dask's sampling profiler keeps the last 1000 s of stack samples: with the engine's
        # deep stacks, a worker grew by about 0.3 MB per second of replay (README: the same
        # for `dask worker`). Its workers here run without it.
        with (
            warnings.catch_warnings(),
            dask.config.set({"distributed.worker.profile.enabled": False}),
        ):
            warnings.filterwarnings("ignore", "Port .* is already in use")  # takes a free one
            cluster = distributed.LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        with cluster, distributed.Client(cluster, set_as_default=False) as client:
            yield client
        return
    try:
        client = distributed.Client(args.scheduler, timeout=args.timeout, set_as_default=False)
    except (OSError, TimeoutError):  # refused, unknown host, or no answer in time
        raise IechsError(
            [
                Problem(
                    f"no Dask scheduler answered within {args.timeout:g} s (is `dask scheduler` "
                    "running there, and the port open?)",
                    "--scheduler",
                )
            ],
            args.scheduler,
        ) from None
    with client:
        try:
            client.wait_for_workers(1, timeout=args.timeout)
        except TimeoutError:
            raise IechsError(
                [
                    Problem(
                        f"no worker joined the scheduler within {args.timeout:g} s (start "
                        f"some: dask worker {args.scheduler} --nthreads 1)",
                        "--scheduler",
                    )
                ],
                args.scheduler,
            ) from None
        yield client


def _check_workers(client: Any, where: str) -> None:
    """Every worker can import iechs, in this version (a pickled guideline needs the same code)."""
    from ._version import __version__
    from .errors import IechsError, Problem

    try:
        versions: dict[str, str] = client.run(_worker_version)
    except Exception as exc:  # e.g. ModuleNotFoundError on a worker without iechs
        raise IechsError(
            [
                Problem(
                    f"a worker cannot run iechs ({type(exc).__name__}: {exc}): install "
                    f"'iechs[cluster]=={__version__}' on every worker",
                    "--scheduler",
                )
            ],
            where,
        ) from None
    other = {w: v for w, v in sorted(versions.items()) if v != __version__}
    if other:
        raise IechsError(
            [
                Problem(
                    f"worker {w} has iechs {v}, this client {__version__}: install the same "
                    "version on every worker",
                    "--scheduler",
                )
                for w, v in other.items()
            ],
            where,
        )


def _slots(client: Any) -> int:
    """Partitions in flight: two per worker thread (one running, one queued behind it)."""
    threads: dict[str, int] = client.nthreads()
    return max(2, 2 * sum(threads.values()))


def replay(
    args: argparse.Namespace, guideline: Guideline, todo: Iterable[tuple[str, str]]
) -> Iterator[list[Summary]]:
    """The summaries of `todo`, one list per partition, in input order (`replay-cohort`'s
    options: `--scheduler` or `--workers`, `--timeout`, `--partition-size`, `--runtime`)."""
    from .errors import IechsError, Problem

    where = args.scheduler or f"LocalCluster of {args.workers}"
    shipment = ship(guideline, args.runtime)
    with connect(args) as client:
        _check_workers(client, where)
        try:
            yield from _in_order(client, shipment, todo, args.partition_size)
        except WorkerMismatchError as exc:  # a worker that joined after the check
            raise IechsError([Problem(str(exc), "--scheduler")], where) from None


def _in_order(
    client: Any, shipment: GuidelineShipment, todo: Iterable[tuple[str, str]], size: int
) -> Iterator[list[Summary]]:
    """Each partition's results, in input order; a sliding window bounds what is in flight."""
    from distributed import KilledWorker

    from .errors import IechsError, Problem

    # A task whose result is the shipment: each worker fetches it once, and, unlike scattered
    # data, the scheduler can compute it again if every worker holding it is lost.
    key = f"iechs-guideline-{shipment.version}-{shipment.runtime}-{shipment.sha256[:16]}"
    shipped = client.submit(_guideline, shipment, key=key)
    pending: deque[tuple[str, Any]] = deque()  # (first key of the partition, its future)

    def collect() -> list[Summary]:
        first, future = pending.popleft()
        try:
            results: list[Summary] = future.result()
        except KilledWorker:
            raise IechsError(
                [
                    Problem(
                        "a worker died on every try at the partition starting here (out of "
                        "memory?); a .jsonl --out keeps the results before it: run again to "
                        "resume"
                    )
                ],
                first,
            ) from None
        return results

    window = _slots(client)
    for batch in _batches(todo, size):
        pending.append((batch[0][0], client.submit(replay_partition, shipped, batch, pure=False)))
        if len(pending) >= window:
            yield collect()
            window = _slots(client)  # workers may have joined or left
    while pending:
        yield collect()
