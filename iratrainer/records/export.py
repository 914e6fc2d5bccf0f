"""Exports: CSV of sessions and metrics, xAPI 1.0.3 statements, and sync to a Learning Record Store.

Statements (one per verb and session): ``attempted`` for every session, ``completed`` for
a session that ended normally, then ``passed`` or ``failed`` against the proficiency
benchmark. The actor is the trainee (``mbox`` when an e-mail is known, an account on
this installation otherwise), the object the case (an activity whose id carries the case
id), the result the scaled score, success, completion, ISO 8601 duration and every metric
as extensions. Statement ids are UUIDv5 of (session, verb), so sending twice is harmless:
``sync`` posts only the statements not yet recorded as sent, and an LRS that already has
one (409) counts it as sent.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

from iratrainer.records.store import RecordsError, Store

__all__ = ["statements", "sessions_csv", "sync", "XAPI_VERBS"]

NS = uuid.UUID("5b0f3a8e-6f7c-4c5e-9c1e-2b1d0a7e4f11")
HOME = "https://iratrainer.invalid"
XAPI_VERBS = {
    "attempted": "http://adlnet.gov/expapi/verbs/attempted",
    "completed": "http://adlnet.gov/expapi/verbs/completed",
    "passed": "http://adlnet.gov/expapi/verbs/passed",
    "failed": "http://adlnet.gov/expapi/verbs/failed",
}


def _duration(seconds: float | None) -> str:
    return f"PT{float(seconds or 0.0):.2f}S"


def statements(store: Store, trainee: str | None = None) -> list[dict[str, Any]]:
    """xAPI statements for every session (or one trainee's)."""
    tid = store.trainee_id(trainee) if trainee else None
    people = {t["id"]: t for t in store.trainees()}
    out = []
    for s in store.sessions(trainee_id=tid):
        t = people[s["trainee_id"]]
        actor: dict[str, Any] = {"objectType": "Agent", "name": t["name"]}
        if t.get("email"):
            actor["mbox"] = f"mailto:{t['email']}"
        else:
            actor["account"] = {"homePage": HOME, "name": f"trainee-{t['id']}"}
        metrics = store.metrics_of(s["id"])
        ext = {f"{HOME}/xapi/metrics/{k}": v for k, v in metrics.items()
               if k != "score_details" and not isinstance(v, dict | list)}
        obj = {"objectType": "Activity", "id": f"{HOME}/cases/{s['case_id']}",
               "definition": {"name": {"en-US": s.get("title_en") or s["case_id"]},
                              "type": "http://adlnet.gov/expapi/activities/simulation"}}
        verbs = ["attempted"]
        if s["status"] == "completed":
            verbs += ["completed", "passed" if s.get("passed") else "failed"]
        for verb in verbs:
            st: dict[str, Any] = {
                "id": str(uuid.uuid5(NS, f"{s['id']}:{verb}")), "actor": actor,
                "verb": {"id": XAPI_VERBS[verb], "display": {"en-US": verb}}, "object": obj,
                "timestamp": s["started_at"],
                "context": {"platform": "iratrainer", "language": "fr-FR",
                            "extensions": {f"{HOME}/xapi/session": s["id"], f"{HOME}/xapi/case-hash": s["case_hash"]}},
            }
            if verb != "attempted":
                score = float(s.get("score") or 0.0)
                st["result"] = {"score": {"scaled": round(score / 100.0, 4), "raw": round(score, 2), "min": 0,
                                          "max": 100},
                                "success": bool(s.get("passed")), "completion": s["status"] == "completed",
                                "duration": _duration(s.get("sim_time_s")), "extensions": ext}
            out.append(st)
    return out


def sessions_csv(store: Store, trainee: str | None = None) -> str:
    """Sessions and their scalar metrics as CSV text (one row per session)."""
    tid = store.trainee_id(trainee) if trainee else None
    rows = []
    names: list[str] = []
    for s in store.sessions(trainee_id=tid):
        m = {k: v for k, v in store.metrics_of(s["id"]).items() if not isinstance(v, dict | list)}
        for k in m:
            if k not in names:
                names.append(k)
        rows.append((s, m))
    head = ["session", "trainee", "cohort", "case", "level", "started_at", "status", "score", "passed"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head + [f"m_{n}" for n in names])
    for s, m in rows:
        w.writerow([s["id"], s["trainee"], s["cohort"], s["case_id"], s["level"], s["started_at"], s["status"],
                    s["score"], s["passed"]] + [m.get(n) for n in names])
    return buf.getvalue()


def sync(store: Store, lrs_url: str, user: str, password: str, timeout_s: float = 10.0) -> tuple[int, int]:
    """Post the statements not yet sent; returns (sent now, already sent before)."""
    all_st = statements(store)
    sent = {r["id"] for r in store.db["statements"].rows}
    todo = [s for s in all_st if s["id"] not in sent]
    if not todo:
        return 0, len(sent)
    url = lrs_url.rstrip("/") + ("" if lrs_url.rstrip("/").endswith("/statements") else "/xAPI/statements")
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(url, data=json.dumps(todo).encode(), method="POST", headers={
        "Content-Type": "application/json", "X-Experience-API-Version": "1.0.3", "Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise RecordsError(f"{lrs_url}: the LRS rejected the credentials for '{user}' (HTTP {exc.code}); "
                               f"{len(todo)} statement(s) kept for the next sync") from None
        if exc.code != 409:
            raise RecordsError(f"{lrs_url}: the LRS answered HTTP {exc.code}; {len(todo)} statement(s) kept for the "
                               "next sync") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RecordsError(f"{lrs_url}: cannot reach the LRS ({reason}); {len(todo)} statement(s) kept for the next "
                           "sync") from None
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with store.db.conn:
        store.db["statements"].insert_all([{"id": s["id"], "session_id": s["context"]["extensions"][
            f"{HOME}/xapi/session"], "body": json.dumps(s), "sent_at": now} for s in todo], ignore=True)
    return len(todo), len(sent)
