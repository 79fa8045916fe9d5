"""The usage ledger: one row per call in SQLite, written in batches by a thread.

The event loop only appends a record to a queue (``put``: no I/O, no lock held for
long). A writer thread takes what has gathered, at most every ``flush_interval_s``
or once ``batch_size`` records wait, and commits them in one transaction. SQLite
runs in WAL mode with ``synchronous=NORMAL``: a committed batch survives the
process being killed, so a hard kill loses at most the records of the last window
(those not yet committed). ``close`` (the plugin's ``shutdown``, after the drain)
writes everything left.

A batch that fails (the database locked past the busy timeout, the disk full) is
kept and retried with backoff; the records waiting are bounded by ``max_pending``
and records beyond it are counted as lost and logged, never dropped in silence.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from itertools import chain
from typing import Any

log = logging.getLogger("gateway.plugins.cost")

COLUMNS = (
    "ts",
    "day",
    "request_id",
    "client",
    "provider",
    "model",
    "path",
    "status",
    "error",
    "stream",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_picousd",
    "cache_hit",
    "estimated",
    "cascade",
    "duration_ms",
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,                 -- unix time the call completed
    day TEXT NOT NULL,                -- UTC day, YYYY-MM-DD (budgets and analytics)
    request_id TEXT NOT NULL,
    client TEXT NOT NULL,             -- the caller: client name, x-gateway-user or address
    provider TEXT,                    -- the provider that answered (none: answered before the upstream)
    model TEXT,                       -- the model priced (the served model when a plugin changed it)
    path TEXT NOT NULL,
    status INTEGER NOT NULL,          -- the status the caller got (499: the caller left)
    error TEXT,                       -- the gateway's error code, if it answered with one
    stream INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,    -- every prompt token, cached ones included
    output_tokens INTEGER NOT NULL,   -- reasoning tokens included
    cached_input_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost_picousd INTEGER NOT NULL,    -- exact cost in 10^-12 USD
    cache_hit INTEGER NOT NULL,       -- answered from the gateway's cache: cost 0
    estimated INTEGER NOT NULL,       -- tokens counted by the gateway, not reported by the provider
    cascade TEXT,                     -- accepted | escalated, with a cascade
    duration_ms REAL NOT NULL
);
-- budgets read by (day, client). No other index: each one is paid on every insert, and one on
-- request_id (random keys scattered over a growing tree) made a record cost the writer 4-5x the CPU.
CREATE INDEX IF NOT EXISTS usage_day_client ON usage (day, client);
CREATE VIEW IF NOT EXISTS usage_usd AS
    SELECT *, cost_picousd / 1e12 AS cost_usd FROM usage;
"""

#: what a record holds for "none" in the columns of NONE_AS_NULL (an error code, a cascade
#: decision: text, never the integer 0); the row gets NULL there. sqlite3 adapts a bound
#: None through two failed attribute lookups (~3k instructions) and copies a bound string:
#: an integer is the cheapest bind.
NONE = 0
NONE_AS_NULL = frozenset({"error", "cascade"})
_ROW = "(" + ", ".join("NULLIF(?, 0)" if column in NONE_AS_NULL else "?" for column in COLUMNS) + ")"
#: rows per INSERT statement. SQLite releases the GIL once per statement step, and the
#: event loop wants it back each time: one statement per row made the writer thread
#: and the loop hand the GIL to each other for every record (about 12 us of CPU a
#: record under load, against 3 us for the insert itself).
ROWS_PER_INSERT = 64
#: the statements a batch is cut into: as many 64-row ones as fit, then one of each
#: smaller power of two the rest needs (a handful of statements, all prepared once:
#: a statement for every row count would each be parsed anew, ~1M instructions apiece)
STATEMENT_ROWS = (ROWS_PER_INSERT, 32, 16, 8, 4, 2, 1)


def insert_rows(count: int) -> str:
    """The INSERT of ``count`` records (bound in COLUMNS order, record after record)."""
    return f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES {', '.join([_ROW] * count)}"


_INSERTS = {count: insert_rows(count) for count in STATEMENT_ROWS}
#: a record for parsing the statements (never committed)
_PARSE_ROW = (0,) * len(COLUMNS)
_STOP: Any = object()
_FLUSH: Any = object()
BUSY_TIMEOUT_MS = 2000
RETRY_MAX_S = 5.0
PRUNE_EVERY_S = 3600.0


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    else:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        # WAL's own durability: a commit survives the process, only a power loss can
        # take the last ones back (FULL, SQLite's default, would fsync every batch)
        connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return connection


def open_database(path: str) -> None:
    """Create the file, the table and WAL mode (once, at startup; raises when it cannot)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    connection = connect(path)
    try:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.executescript(SCHEMA)
    finally:
        connection.close()


class Ledger:
    """A batching SQLite writer on a thread of its own."""

    def __init__(
        self,
        path: str,
        *,
        flush_interval_s: float,
        batch_size: int,
        max_pending: int,
        retention_days: int | None = None,
    ) -> None:
        self.path = path
        self.retention_days = retention_days
        self.pruned = 0
        self._pruned_at: float | None = None  # None: due
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: figures for /stats (written by the thread, read by the loop: ints, so no lock)
        self.written = 0
        self.write_errors = 0
        self.lost = 0
        self.batches = 0
        self._queued = 0
        self._taken = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._flushed = threading.Event()

    @property
    def pending(self) -> int:
        return self._queued - self.written - self.lost

    def start(self) -> None:
        open_database(self.path)
        self._thread = threading.Thread(target=self._run, name="cost-ledger", daemon=True)
        self._thread.start()

    def put(self, record: tuple[Any, ...]) -> None:
        """Queue one record (a tuple in COLUMNS order); never blocks.

        The writer sleeps through its window rather than waiting on the queue, so a
        put does not wake a thread (and hand the GIL over) for every record."""
        self._queued += 1
        self.queue.put(record)
        # Wake the writer once per full batch: setting a set Event still takes its lock.
        if self._queued - self._taken >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def close(self, timeout_s: float = 30.0) -> None:
        """Write every queued record, then stop the thread (blocking: call it off the loop)."""
        if self._thread is None:
            return
        self.queue.put(_STOP)
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("usage ledger: %d record(s) still unwritten at shutdown", self.pending)
        self._thread = None

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Write what is queued now (blocking; for tests and admin)."""
        self._flushed.clear()
        self.queue.put(_FLUSH)
        self._wake.set()
        return self._flushed.wait(timeout_s)

    # -- the writer thread --------------------------------------------------------

    def _run(self) -> None:
        batch: deque[tuple[Any, ...]] = deque()
        connection: sqlite3.Connection | None = None
        try:  # now, not with the first batch: the statements' parse is startup work
            connection = self._connect()
        except sqlite3.Error:
            pass  # the first batch connects (and says why it cannot)
        stopping = False
        backoff_s = 0.0
        failures_at_stop = 0
        while True:
            # Sleep one window (or the backoff after a failure) unless a full batch, a
            # flush or a stop wakes us, then take everything queued: a record waits
            # at most one window before its batch is written.
            self._wake.wait(backoff_s or self.flush_interval_s)
            self._wake.clear()
            flush_requested = False
            while True:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                elif item is _FLUSH:
                    flush_requested = True
                else:
                    self._taken += 1
                    if len(batch) < self.max_pending:
                        batch.append(item)
                    else:
                        self._lose()
            if batch:
                connection, error = self._write(connection, batch)
                if error is None:
                    backoff_s = 0.0
                else:
                    self.write_errors += 1
                    backoff_s = min(max(backoff_s * 2, 0.1), RETRY_MAX_S)
                    log.warning(
                        "usage ledger: writing %d record(s) failed (%s); retrying in %.1f s", len(batch), error, backoff_s
                    )
                    if stopping:
                        failures_at_stop += 1
                        if failures_at_stop >= 3:
                            self.lost += len(batch)
                            log.error("usage ledger: %d record(s) lost at shutdown: the store keeps failing", len(batch))
                            batch.clear()
                        else:
                            self._wake.set()  # retry soon: the shutdown is waiting
                            time.sleep(backoff_s)
            if self.retention_days is not None and (
                self._pruned_at is None or time.monotonic() - self._pruned_at > PRUNE_EVERY_S
            ):
                connection = self._prune(connection)
            if flush_requested and not batch:
                self._flushed.set()
            if stopping and not batch:
                break
        if connection is not None:
            connection.close()
        self._flushed.set()

    def _prune(self, connection: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """Delete the records of days older than ``retention_days`` (once an hour)."""
        self._pruned_at = time.monotonic()
        assert self.retention_days is not None
        cutoff = time.strftime("%Y-%m-%d", time.gmtime(time.time() - self.retention_days * 86400))
        try:
            if connection is None:
                connection = self._connect()
            self.pruned += connection.execute("DELETE FROM usage WHERE day < ?", (cutoff,)).rowcount
        except sqlite3.Error as exc:
            log.warning("usage ledger: deleting records before %s failed: %s", cutoff, exc)
        return connection

    def _connect(self) -> sqlite3.Connection:
        connection = connect(self.path)
        connection.executescript(SCHEMA)  # the file may have been locked at startup, or replaced
        # sqlite3 parses a statement on its first execute and caches it: run each INSERT
        # once in a transaction rolled back, so that no batch pays a parse (~0.5M
        # instructions for the 64-row one) whenever a row count first comes up.
        connection.execute("BEGIN")
        try:
            for count, statement in _INSERTS.items():
                connection.execute(statement, _PARSE_ROW * count)
        finally:
            connection.execute("ROLLBACK")
        return connection

    def _lose(self) -> None:
        """A record beyond ``max_pending``: counted, and logged now and then."""
        self.lost += 1
        if self.lost == 1 or self.lost % 1000 == 0:
            log.error("usage ledger: %d record(s) lost so far: the store keeps failing", self.lost)

    def _write(
        self, connection: sqlite3.Connection | None, batch: deque[tuple[Any, ...]]
    ) -> tuple[sqlite3.Connection | None, sqlite3.Error | None]:
        try:
            if connection is None:
                connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            try:
                rows = list(batch)
                start = 0
                for count in STATEMENT_ROWS:
                    while len(rows) - start >= count:
                        connection.execute(_INSERTS[count], list(chain.from_iterable(rows[start : start + count])))
                        start += count
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if connection is not None:
                try:
                    connection.close()
                except sqlite3.Error:
                    pass
            return None, exc
        except (OverflowError, ValueError, TypeError):
            # A record sqlite3 cannot bind (an integer over 2**63 - 1): written again one
            # by one, so that it alone is lost, not the thread and every later record.
            return self._write_each(connection, batch)
        self.written += len(batch)
        self.batches += 1
        batch.clear()
        return connection, None

    def _write_each(
        self, connection: sqlite3.Connection, batch: deque[tuple[Any, ...]]
    ) -> tuple[sqlite3.Connection | None, sqlite3.Error | None]:
        """Write ``batch`` a record at a time, dropping (and counting as lost) those that cannot be bound."""
        try:
            while batch:
                record = batch[0]
                try:
                    connection.execute(_INSERTS[1], record)
                except (OverflowError, ValueError, TypeError) as exc:
                    self.lost += 1
                    log.error("usage ledger: a record that cannot be stored is lost (%s: %s)", type(exc).__name__, exc)
                else:
                    self.written += 1
                batch.popleft()
        except sqlite3.Error as exc:
            try:
                connection.close()
            except sqlite3.Error:
                pass
            return None, exc
        self.batches += 1
        return connection, None


FIGURES = (
    ("requests", "COUNT(*)"),
    ("input_tokens", "SUM(input_tokens)"),
    ("output_tokens", "SUM(output_tokens)"),
    ("cached_input_tokens", "SUM(cached_input_tokens)"),
    ("cache_write_tokens", "SUM(cache_write_tokens)"),
    ("reasoning_tokens", "SUM(reasoning_tokens)"),
    ("cost_picousd", "SUM(cost_picousd)"),
    ("cache_hits", "SUM(cache_hit)"),
    ("errors", "SUM(status >= 400)"),
    ("estimated", "SUM(estimated)"),
)
GROUPS = ("client", "provider", "model")


def summarize(
    path: str, *, since_day: str, filters: dict[str, str], group_by: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Per-day rows (and per ``group_by`` column) of the ledger since ``since_day`` (blocking).

    Column names come from :data:`GROUPS` only; values are bound parameters."""
    keys = ("day", *group_by)
    where = ["day >= ?"]
    params: list[Any] = [since_day]
    for column, value in filters.items():
        assert column in GROUPS
        where.append(f"{column} = ?")
        params.append(value)
    sql = (
        f"SELECT {', '.join(keys)}, {', '.join(expr for _, expr in FIGURES)} FROM usage "
        f"WHERE {' AND '.join(where)} GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}"
    )
    if not os.path.exists(path):
        return []
    connection = connect(path, readonly=True)
    try:
        rows = connection.execute(sql, params).fetchall()
    finally:
        connection.close()
    names = (*keys, *(name for name, _ in FIGURES))
    return [{name: (value if value is not None else 0) for name, value in zip(names, row, strict=True)} for row in rows]


def spent_since(path: str, since_day: str) -> list[tuple[str, str, int]]:
    """(client, day, picodollars) since ``since_day``: what budgets start from after a restart."""
    connection = connect(path, readonly=True)
    try:
        return connection.execute(
            "SELECT client, day, SUM(cost_picousd) FROM usage WHERE day >= ? GROUP BY client, day", (since_day,)
        ).fetchall()
    finally:
        connection.close()
