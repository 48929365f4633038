"""Checkpoints of a SQLite store's write-ahead log, off the request path.

SQLite in WAL mode appends each commit to the log; by default the connection whose commit takes
the log past 1,000 pages then copies it back into the database file and syncs that file, before
the commit returns. The service commits on most requests (the cards it hands out), so one
request in a hundred or two paid for a checkpoint: a sync of the database file, 5 to 50 ms, in
the tail of every latency figure. The service's connections therefore leave checkpoints to a
thread of their own (`Checkpointer`), which runs a passive checkpoint (it waits for no reader
and no writer) every `interval` seconds; its sync holds no lock a request needs, and the thread
runs outside the interpreter lock while SQLite works. What a commit makes durable does not
change: that is the log's sync (`synchronous`), not the checkpoint's.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

__all__ = ["Checkpointer"]


class Checkpointer:
    """A thread that checkpoints the write-ahead log of the SQLite file at `path`."""

    def __init__(self, path: str, interval: float = 0.25) -> None:
        self.uri = Path(path).absolute().as_uri() + "?mode=rw"
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: how many checkpoints ran (for tests and operators).
        self.runs = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="iechs-wal-checkpoint", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout=30)
            self._stop = threading.Event()

    def _run(self) -> None:
        stop = self._stop
        conn: sqlite3.Connection | None = None
        try:
            while not stop.wait(self.interval):
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.uri, uri=True, isolation_level=None)
                        conn.execute("PRAGMA busy_timeout = 1000")
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.runs += 1
                except sqlite3.Error:
                    # The next round tries again; the requests' connections are unaffected.
                    if conn is not None:
                        with contextlib.suppress(sqlite3.Error):
                            conn.close()
                    conn = None
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
