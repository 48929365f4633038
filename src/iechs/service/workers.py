"""`iechs serve --workers N`: N processes answering on one port.

On Linux each worker process listens on a socket of its own, all bound to the same address
(`SO_REUSEPORT`), and the kernel spreads new connections over them. With one socket shared by
all (uvicorn's own way), whichever process woke first took every connection waiting: twenty
connections opened at once went 20 to 0 or 17 to 3, and one process did nearly all the work
while the other idled, whatever the number of cores. Each socket has `TCP_NODELAY` (an answer's
headers and body go as two writes: without it, the second waits for the client's delayed ACK of
the first, 40 ms).

The supervisor (this process) starts the workers, starts a worker again on its socket when it
dies (unless it could not even start: then it stops everything, as it does on SIGINT or
SIGTERM, which it passes on to the workers, which finish the requests in hand). Elsewhere
(no `SO_REUSEPORT` spreading, e.g. macOS or Windows) uvicorn's supervisor runs the workers on
one shared socket.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

__all__ = ["serve_workers"]

#: uvicorn's exit code of a server that could not start.
STARTUP_FAILURE = 3
#: a worker that dies this soon after its start did not start.
_STARTING_S = 15.0
#: how many times in a row a worker may fail to start before the service stops.
_TRIES = 3


def serve_workers(config: Any, workers: int) -> int:
    """Serve `config` (a `uvicorn.Config` whose app is an import string) with `workers`
    processes; the exit code."""
    if not (sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")):
        return _uvicorn_workers(config)
    try:
        sockets = _sockets(config.host, config.port, config.backlog, workers)
    except OSError as exc:
        _say(f"cannot listen on {config.host}:{config.port}: {exc}")
        return 2
    return _Supervisor(config, sockets).run()


def _sockets(host: str, port: int, backlog: int, n: int) -> list[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # A plain bind first: an address any other listener holds (another `iechs serve` too) is
    # refused here, where sockets that all allow port sharing would quietly share it.
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]
    out = []
    try:
        for _ in range(n):
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by connections
            sock.bind((host, port))
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in out:
            sock.close()
        raise
    return out


def _say(text: str) -> None:
    sys.stderr.write(f"iechs serve: {text}\n")
    sys.stderr.flush()


def _worker(config: Any, sock: socket.socket, parent: int) -> None:  # pragma: no cover
    """A worker process: uvicorn's server on `sock`; it ends with its supervisor (`parent`),
    even one killed without a word (SIGKILL), rather than serve on unsupervised."""
    try:
        import ctypes  # noqa: PLC0415 - Linux only, here

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the supervisor ended before that took effect
        return
    config.configure_logging()
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


class _Supervisor:
    def __init__(self, config: Any, sockets: list[socket.socket]) -> None:
        self.config = config
        self.sockets = sockets
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[Any] = [None] * len(sockets)
        self.started = [0.0] * len(sockets)
        self.failed = [0] * len(sockets)
        self.stop = threading.Event()

    def _start(self, k: int) -> None:
        process = self.context.Process(
            target=_worker,
            args=(self.config, self.sockets[k], os.getpid()),
            name=f"iechs-serve-{k}",
        )
        process.start()
        self.processes[k] = process
        self.started[k] = time.monotonic()

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, lambda *_: self.stop.set())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        code = 0
        try:
            for k in range(len(self.sockets)):
                self._start(k)
            while not self.stop.wait(0.25):
                code = self._watch()
                if code:
                    break
        finally:
            self._end()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for sock in self.sockets:
                sock.close()
        return code

    def _watch(self) -> int:
        """Start again the workers that died; an exit code when the service must stop."""
        for k, process in enumerate(self.processes):
            if process.is_alive() or self.stop.is_set():
                continue
            process.join()
            quick = time.monotonic() - self.started[k] < _STARTING_S
            self.failed[k] = self.failed[k] + 1 if quick else 0
            if process.exitcode == STARTUP_FAILURE or self.failed[k] >= _TRIES:
                _say(
                    f"worker process {process.pid} could not start (exit code "
                    f"{process.exitcode}); stopping"
                )
                return 1
            _say(f"worker process {process.pid} ended ({process.exitcode}); starting another")
            self._start(k)
        return 0

    def _end(self) -> None:
        """SIGTERM to the workers (they finish the requests in hand), then wait for them."""
        alive = [p for p in self.processes if p is not None and p.is_alive()]
        for process in alive:
            process.terminate()
        deadline = time.monotonic() + 30.0
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()


def _uvicorn_workers(config: Any) -> int:
    """uvicorn's supervisor, on one socket shared by the workers, with `TCP_NODELAY`: uvicorn
    makes its socket with protocol 0, on which asyncio sets no `TCP_NODELAY`."""
    bound = config.bind_socket()
    sock = bound
    if bound.family in (socket.AF_INET, socket.AF_INET6):
        sock = socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.set_inheritable(True)
    supervise: Any = Multiprocess
    if "target" in inspect.signature(supervise).parameters:  # older uvicorn
        supervisor = supervise(config, target=uvicorn.Server(config).run, sockets=[sock])
    else:
        supervisor = supervise(config, sockets=[sock])
    try:
        supervisor.run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0
