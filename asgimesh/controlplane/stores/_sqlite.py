"""The default store: one SQLite file (WAL), nothing to install.

``sqlite3`` blocks, so every call runs on a worker thread (``anyio.to_thread``) and the event
loop keeps answering long polls meanwhile. One connection behind a lock is enough: the control
plane writes a handful of rows a minute; reads of the current version come from memory.
``BEGIN IMMEDIATE`` makes "read the highest version, write the next" one atomic step, even if
another process opened the same file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from ._base import PolicyRecord

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS policy_versions (version INTEGER PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS service_tokens (
    digest TEXT PRIMARY KEY, service TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reports (
    service TEXT NOT NULL, instance TEXT NOT NULL, received REAL NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (service, instance));
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SQLiteStore:
    shared = False

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"sqlite:{path}"
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    async def _run(self, func: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                assert self._db is not None, "store not open"
                return func(self._db)

        return await anyio.to_thread.run_sync(call)

    async def open(self) -> None:
        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            self._db = db

        await anyio.to_thread.run_sync(connect)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await anyio.to_thread.run_sync(db.close)

    async def latest(self) -> PolicyRecord | None:
        def read(db: sqlite3.Connection) -> PolicyRecord | None:
            row = db.execute(
                "SELECT record FROM policy_versions ORDER BY version DESC LIMIT 1"
            ).fetchone()
            return PolicyRecord.from_json(row[0]) if row else None

        return await self._run(read)

    async def get(self, version: int) -> PolicyRecord | None:
        def read(db: sqlite3.Connection) -> PolicyRecord | None:
            row = db.execute(
                "SELECT record FROM policy_versions WHERE version = ?", (version,)
            ).fetchone()
            return PolicyRecord.from_json(row[0]) if row else None

        return await self._run(read)

    async def history(self, limit: int) -> list[PolicyRecord]:
        def read(db: sqlite3.Connection) -> list[PolicyRecord]:
            rows = db.execute(
                "SELECT record FROM policy_versions ORDER BY version DESC LIMIT ?", (limit,)
            ).fetchall()
            return [PolicyRecord.from_json(row[0]) for row in rows]

        return await self._run(read)

    async def append(self, make: Callable[[int], PolicyRecord]) -> PolicyRecord:
        def write(db: sqlite3.Connection) -> PolicyRecord:
            db.execute("BEGIN IMMEDIATE")
            try:
                (highest,) = db.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM policy_versions"
                ).fetchone()
                record = make(int(highest) + 1)
                db.execute(
                    "INSERT INTO policy_versions (version, record) VALUES (?, ?)",
                    (record.version, record.to_json()),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return record

        return await self._run(write)

    async def refresh(self, record: PolicyRecord) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE policy_versions SET record = ? WHERE version = ?",
                (record.to_json(), record.version),
            )
        )

    async def follow(self, after: int) -> AsyncIterator[PolicyRecord]:
        """One writer per file: nothing else writes, so there is nothing to follow."""
        await anyio.sleep_forever()
        if False:  # pragma: no cover - makes this an async generator
            yield PolicyRecord(after, {}, "", "", 0.0)

    async def put_token(self, digest: str, service: str) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT INTO service_tokens (digest, service, created) VALUES (?, ?, ?)",
                (digest, service, time.time()),
            )
        )

    async def token_service(self, digest: str) -> str | None:
        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute(
                "SELECT service FROM service_tokens WHERE digest = ?", (digest,)
            ).fetchone()
            return str(row[0]) if row else None

        return await self._run(read)

    async def put_report(self, service: str, instance: str, report: dict[str, Any]) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO reports (service, instance, received, body) "
                "VALUES (?, ?, ?, ?)",
                (service, instance, time.time(), json.dumps(report)),
            )
        )

    async def reports(self, newer_than: float) -> list[dict[str, Any]]:
        def read(db: sqlite3.Connection) -> list[dict[str, Any]]:
            db.execute("DELETE FROM reports WHERE received <= ?", (newer_than,))
            rows = db.execute("SELECT body, received FROM reports").fetchall()
            return [{**json.loads(body), "received": received} for body, received in rows]

        return await self._run(read)

    async def bootstrap_secret(self, name: str, value: str) -> str:
        def write(db: sqlite3.Connection) -> str:
            db.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)", (name, value))
            (stored,) = db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            return str(stored)

        return await self._run(write)

    async def read_bootstrap(self, name: str) -> str | None:
        def read(db: sqlite3.Connection) -> str | None:
            row = db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            return None if row is None else str(row[0])

        return await self._run(read)

    async def delete_bootstrap(self, name: str) -> None:
        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM secrets WHERE name = ?", (name,))

        await self._run(delete)
