"""Trainee records in SQLite through sqlite-utils.

Tables: ``cohorts``, ``trainees``, ``cases`` (id and content hash), ``sessions`` (trainee,
case, start, duration, seed, app version, status running/completed/aborted, outcome,
score, passed), ``metrics`` (one row per metric), ``events`` and ``controls`` (the replay),
``statements`` (xAPI statements already sent to an LRS). Schema changes are named
migrations recorded in ``_migrations``; the database runs in WAL mode with a busy
timeout, so two processes can write it; a session is written as it goes (events and
controls in batches), so a crash or a kill loses at most the last batch, and a session
left ``running`` is marked ``aborted`` the next time the store opens.

Where: ``--db PATH``, else ``IRATRAINER_DB``, else ``records.db`` in the user data
folder (``IRATRAINER_HOME`` or the platform's).
"""

from __future__ import annotations

import difflib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from iratrainer.errors import IratrainerError

__all__ = ["RecordsError", "Store", "default_db_path", "MIGRATIONS"]


class RecordsError(IratrainerError):
    """The records database cannot be used (corrupt, locked, unknown trainee...)."""


def default_db_path() -> Path:
    """``IRATRAINER_DB``, else ``records.db`` in the user data folder."""
    env = os.environ.get("IRATRAINER_DB")
    if env:
        return Path(env)
    home = os.environ.get("IRATRAINER_HOME")
    if home:
        return Path(home) / "records.db"
    from platformdirs import user_data_dir

    return Path(user_data_dir("iratrainer")) / "records.db"


def _m1(db: sqlite_utils.Database) -> None:
    db["cohorts"].create({"name": str, "programme": str, "created": str}, pk="name")
    db["trainees"].create({"id": int, "name": str, "cohort": str, "des_year": int, "email": str, "created": str},
                          pk="id", not_null={"name"}, foreign_keys=[("cohort", "cohorts", "name")])
    db["trainees"].create_index(["name"], unique=True)
    db["cases"].create({"id": str, "hash": str, "title_en": str, "title_fr": str, "level": str, "difficulty": int},
                       pk=("id", "hash"))
    db["sessions"].create({"id": str, "trainee_id": int, "case_id": str, "case_hash": str, "started_at": str,
                           "duration_s": float, "sim_time_s": float, "seed": int, "app_version": str,
                           "status": str, "outcome": str, "score": float, "passed": int, "autopilot": str},
                          pk="id", foreign_keys=[("trainee_id", "trainees", "id")])
    db["sessions"].create_index(["trainee_id"])
    db["metrics"].create({"session_id": str, "name": str, "value": float, "text": str}, pk=("session_id", "name"),
                         foreign_keys=[("session_id", "sessions", "id")])
    db["events"].create({"session_id": str, "seq": int, "t_s": float, "kind": str, "data": str},
                        pk=("session_id", "seq"), foreign_keys=[("session_id", "sessions", "id")])
    db["controls"].create({"session_id": str, "seq": int, "step": int, "controls": str}, pk=("session_id", "seq"),
                          foreign_keys=[("session_id", "sessions", "id")])
    db["statements"].create({"id": str, "session_id": str, "body": str, "sent_at": str}, pk="id")


def _m2(db: sqlite_utils.Database) -> None:
    """Sessions remember their mode: ``practice`` (aids on) or ``exam`` (no 3-D overview)."""
    db["sessions"].add_column("mode", str, not_null_default="practice")


MIGRATIONS = [("0001_initial", _m1), ("0002_session_mode", _m2)]


class Store:
    """One records database (see the module docstring)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordsError(f"{self.path}: cannot create the folder ({exc.strerror or exc})") from None
        try:
            conn = sqlite3.connect(str(self.path), timeout=15.0, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 15000")
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA quick_check").fetchall()
            self.db.enable_wal()
            self._migrate()
            self._recover()
        except sqlite3.DatabaseError as exc:
            raise RecordsError(f"{self.path}: not a usable iratrainer database ({exc}); it was left untouched") from None

    def _migrate(self) -> None:
        db = self.db
        if "_migrations" not in db.table_names():
            db["_migrations"].create({"name": str, "applied_at": str}, pk="name")
        done = {r["name"] for r in db["_migrations"].rows}
        for name, fn in MIGRATIONS:
            if name not in done:
                with db.conn:
                    fn(db)
                    db["_migrations"].insert({"name": name, "applied_at": _now()})

    def _recover(self) -> None:
        """Sessions left running by a crash or a kill are recorded as aborted."""
        with self.db.conn:
            self.db.execute("UPDATE sessions SET status = 'aborted' WHERE status = 'running'")

    def close(self) -> None:
        """Close the connection."""
        self.db.conn.close()

    # ------------------------------------------------------------------ trainees
    def add_cohort(self, name: str, programme: str = "DES radiologie") -> None:
        """Create a cohort if it does not exist."""
        with self.db.conn:
            self.db["cohorts"].insert({"name": name, "programme": programme, "created": _now()}, ignore=True)

    def add_trainee(self, name: str, cohort: str | None = None, des_year: int | None = None,
                    email: str | None = None) -> int:
        """Add a trainee; returns the id. Names are unique."""
        if not name.strip():
            raise RecordsError("a trainee needs a name")
        if self.trainee_id(name, suggest=False) is not None:
            raise RecordsError(f"trainee '{name}' already exists")
        if cohort:
            self.add_cohort(cohort)
        with self.db.conn:
            return int(self.db["trainees"].insert({"name": name, "cohort": cohort, "des_year": des_year,
                                                   "email": email, "created": _now()}).last_pk)

    def trainee_id(self, name: str, suggest: bool = True) -> int | None:
        """The id of ``name``; with ``suggest``, an unknown name raises naming the closest ones."""
        rows = list(self.db["trainees"].rows_where("name = ?", [name]))
        if rows:
            return int(rows[0]["id"])
        if not suggest:
            return None
        names = [r["name"] for r in self.db["trainees"].rows]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" (did you mean: {', '.join(close)}?)" if close else " (add one with 'iratrainer trainee add')"
        raise RecordsError(f"unknown trainee '{name}'{hint}")

    def trainees(self) -> list[dict[str, Any]]:
        """All trainees with their session counts."""
        return list(self.db.query(
            "SELECT t.id, t.name, t.cohort, t.des_year, t.email, COUNT(s.id) AS sessions, "
            "SUM(s.passed) AS passed FROM trainees t LEFT JOIN sessions s ON s.trainee_id = t.id "
            "GROUP BY t.id ORDER BY t.name"))

    # ------------------------------------------------------------------ sessions
    def start_session(self, trainee_id: int, case: Any, seed: int, app_version: str, autopilot: str = "",
                      mode: str = "practice") -> str:
        """Create a running session (``mode``: practice or exam); returns its id."""
        sid = uuid.uuid4().hex
        with self.db.conn:
            self.db["cases"].insert({"id": case.id, "hash": case.content_hash, "title_en": case.title["en"],
                                     "title_fr": case.title["fr"], "level": case.level,
                                     "difficulty": case.difficulty}, ignore=True)
            self.db["sessions"].insert({"id": sid, "trainee_id": trainee_id, "case_id": case.id,
                                        "case_hash": case.content_hash, "started_at": _now(), "seed": seed,
                                        "app_version": app_version, "status": "running", "autopilot": autopilot,
                                        "mode": mode})
        return sid

    def append(self, sid: str, events: Iterable[dict[str, Any]], controls: Iterable[tuple[int, int, dict[str, Any]]],
               first_seq: int, sim_time_s: float | None = None) -> None:
        """Write a batch of events (seq from ``first_seq``) and controls ((seq, step, controls)).

        ``sim_time_s``: how far the session had got (a resume replays to there).
        """
        ev = [{"session_id": sid, "seq": first_seq + k, "t_s": e["t_s"], "kind": e["kind"],
               "data": json.dumps({x: y for x, y in e.items() if x not in ("t_s", "kind")})}
              for k, e in enumerate(events)]
        co = [{"session_id": sid, "seq": seq, "step": step, "controls": json.dumps(c)} for seq, step, c in controls]
        with self.db.conn:
            if ev:
                self.db["events"].insert_all(ev, replace=True)
            if co:
                self.db["controls"].insert_all(co, replace=True)
            if sim_time_s is not None:
                self.db["sessions"].update(sid, {"sim_time_s": float(sim_time_s)})

    def finish_session(self, sid: str, metrics: dict[str, Any], score: dict[str, Any], status: str = "completed",
                       duration_s: float = 0.0) -> None:
        """Record the metrics and the score; mark the session completed (or aborted)."""
        rows = []
        for k, v in metrics.items():
            if isinstance(v, bool) or isinstance(v, int | float):
                rows.append({"session_id": sid, "name": k, "value": float(v), "text": None})
            elif v is None or isinstance(v, str):
                rows.append({"session_id": sid, "name": k, "value": None, "text": v})
            else:
                rows.append({"session_id": sid, "name": k, "value": None, "text": json.dumps(v)})
        rows.append({"session_id": sid, "name": "score_details", "value": None, "text": json.dumps(score)})
        with self.db.conn:
            self.db["metrics"].insert_all(rows, replace=True)
            self.db["sessions"].update(sid, {"status": status, "outcome": metrics.get("outcome"),
                                             "score": score.get("total"), "passed": int(bool(score.get("passed"))),
                                             "duration_s": duration_s, "sim_time_s": metrics.get("time_s")})

    def sessions(self, trainee_id: int | None = None, cohort: str | None = None) -> list[dict[str, Any]]:
        """Sessions with trainee and case, oldest first."""
        sql = ("SELECT s.*, t.name AS trainee, t.cohort, c.level, c.title_en FROM sessions s "
               "JOIN trainees t ON t.id = s.trainee_id LEFT JOIN cases c ON c.id = s.case_id AND c.hash = s.case_hash")
        args: list[Any] = []
        if trainee_id is not None:
            sql += " WHERE s.trainee_id = ?"
            args.append(trainee_id)
        elif cohort is not None:
            sql += " WHERE t.cohort = ?"
            args.append(cohort)
        return list(self.db.query(sql + " ORDER BY s.started_at, s.rowid", args))  # rowid: insertion order

    def metrics_of(self, sid: str) -> dict[str, Any]:
        """The metrics of one session."""
        out: dict[str, Any] = {}
        for r in self.db["metrics"].rows_where("session_id = ?", [sid]):
            out[r["name"]] = r["value"] if r["value"] is not None else (
                json.loads(r["text"]) if r["text"] and r["text"][:1] in "[{" else r["text"])
        return out

    def events_of(self, sid: str) -> list[dict[str, Any]]:
        """The event log of one session."""
        return [{"t_s": r["t_s"], "kind": r["kind"], **json.loads(r["data"])}
                for r in self.db["events"].rows_where("session_id = ?", [sid], order_by="seq")]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _elapsed(t0: float) -> float:
    return time.perf_counter() - t0
