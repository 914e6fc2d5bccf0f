"""Scoring, the records store, curriculum, reports, exports and the LRS sync (issue: scoring and records)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from iratrainer.cli import main
from iratrainer.records.export import XAPI_VERBS, statements, sync
from iratrainer.records.store import RecordsError, Store
from iratrainer.scenario.case import case_dirs, default_case_path, load_case
from iratrainer.scenario.run import HeadlessRun
from iratrainer.scoring.rubric import PASS_MARK, score_session


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "records.db"
    monkeypatch.setenv("IRATRAINER_DB", str(path))
    return path


@pytest.fixture(scope="module")
def nav_sessions():
    case = load_case(case_dirs()[0] / "nav-arch-lcca.toml")
    out = {}
    for who in ("expert", "novice"):
        hr = HeadlessRun(case, who, 2, render=False)
        hr.run()
        out[who] = hr
    return case, out


def test_store_migrates_once_and_uses_wal(db):
    s = Store(db)
    assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s.close()
    s2 = Store(db)
    assert [r["name"] for r in s2.db["_migrations"].rows] == ["0001_initial", "0002_session_mode"]


def test_a_version_1_database_migrates_and_keeps_its_sessions(tmp_path):
    """A database written before sessions had a mode: opened by this version, its rows stay
    and read as practice sessions."""
    import sqlite3

    import sqlite_utils

    from iratrainer.records.store import MIGRATIONS

    path = tmp_path / "old.db"
    old = sqlite_utils.Database(sqlite3.connect(str(path)))
    old["_migrations"].create({"name": str, "applied_at": str}, pk="name")
    MIGRATIONS[0][1](old)
    old["_migrations"].insert({"name": "0001_initial", "applied_at": "2026-01-01T00:00:00"})
    old["trainees"].insert({"id": 1, "name": "Ana"})
    old["sessions"].insert({"id": "s1", "trainee_id": 1, "case_id": "c", "status": "completed", "score": 80.0})
    old.conn.commit()
    old.conn.close()
    s = Store(path)
    rows = list(s.db["sessions"].rows)
    assert rows[0]["id"] == "s1" and rows[0]["score"] == 80.0 and rows[0]["mode"] == "practice"


def test_unknown_trainee_suggests_close_names(db):
    s = Store(db)
    s.add_trainee("Camille Lefèvre", "DES 2026")
    with pytest.raises(RecordsError, match="did you mean: Camille Lefèvre"):
        s.trainee_id("Camile Lefevre")
    with pytest.raises(RecordsError, match="already exists"):
        s.add_trainee("Camille Lefèvre")


def test_corrupt_database_is_reported_and_left_untouched(tmp_path, capsys):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    before = bad.read_bytes()
    assert main(["trainee", "list", "--db", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a usable iratrainer database" in err and str(bad) in err
    assert bad.read_bytes() == before


def test_scores_separate_expert_and_novice(nav_sessions):
    case, runs = nav_sessions
    sc = {k: score_session(hr.proc.metrics(), hr.proc.event_log(), case.level, case.goal.kind) for k, hr in runs.items()}
    assert sc["expert"].total > sc["novice"].total
    assert sc["expert"].passed and sc["expert"].total >= PASS_MARK
    d = sc["novice"].debrief
    assert len(d["fr"]) == len(d["en"]) <= 3
    assert all("t_s" in x and x["text"] for x in d["fr"] + d["en"])


def test_recorded_run_reports_and_exports(db, tmp_path, capsys):
    assert main(["trainee", "add", "Alice Martin", "--cohort", "DES 2026", "--des-year", "2"]) == 0
    assert main(["trainee", "add", "Bob Durand", "--cohort", "DES 2026"]) == 0
    for who, name in (("expert", "Alice Martin"), ("novice", "Bob Durand")):
        assert main(["run", "nav-arch-lcca", "--headless", "--autopilot", who, "--no-render", "--out",
                     str(tmp_path / who), "--trainee", name]) == 0
    res = json.loads((tmp_path / "expert" / "result.json").read_text())
    assert res["records"]["longest_push_s"] < 0.01  # handing a batch to the writer never stalls the loop
    s = Store(db)
    sessions = s.sessions()
    assert len(sessions) == 2 and all(x["status"] == "completed" for x in sessions)
    assert [x["trainee"] for x in sessions] == ["Alice Martin", "Bob Durand"]  # oldest first, same second or not
    ev = s.events_of(sessions[0]["id"])
    assert ev == [json.loads(line) for line in (tmp_path / "expert" / "events.jsonl").read_text().splitlines()]
    assert main(["progress", "Alice Martin"]) == 0
    assert "navigation_basics" in capsys.readouterr().out
    assert main(["report", "--trainee", "Alice Martin", "--out", str(tmp_path / "a.html")]) == 0
    html = (tmp_path / "a.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "nav-arch-lcca" in html
    assert main(["report", "--cohort", "DES 2026", "--out", str(tmp_path / "c.html")]) == 0
    assert "Bob Durand" in (tmp_path / "c.html").read_text()
    assert main(["report", "--cohort", "DES 2026", "--out", str(tmp_path / "nope" / "c.html")]) == 2
    assert main(["export", "--format", "csv", "--out", str(tmp_path / "s.csv")]) == 0
    assert (tmp_path / "s.csv").read_text().count("\n") == 3
    sts = statements(s)
    assert len(sts) == 6  # attempted, completed, passed/failed for two sessions
    verbs = {st["verb"]["id"] for st in sts}
    assert verbs <= set(XAPI_VERBS.values()) and XAPI_VERBS["attempted"] in verbs
    done = [st for st in sts if "result" in st]
    assert all(0.0 <= st["result"]["score"]["scaled"] <= 1.0 and st["result"]["duration"].startswith("PT")
               for st in done)
    assert len({st["id"] for st in sts}) == 6


def test_killed_session_reads_aborted(db):
    s = Store(db)
    tid = s.add_trainee("Chloé")
    sid = s.start_session(tid, load_case(default_case_path()), 0, "test")
    s.append(sid, [{"t_s": 0.0, "kind": "start"}], [], 0)
    s.close()  # the process dies here
    s2 = Store(db)
    row = s2.db["sessions"].get(sid)
    assert row["status"] == "aborted" and len(s2.events_of(sid)) == 1


WRITER = """
import sys
from iratrainer.records.store import Store
s = Store(sys.argv[1])
for k in range(40):
    try:
        s.add_trainee(f"{sys.argv[2]}-{k}")
    except Exception as exc:
        print(type(exc).__name__, exc); raise
"""


def test_two_processes_write_the_same_database(db):
    Store(db).close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), tag]) for tag in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    s = Store(db)
    assert len(s.trainees()) == 80
    assert s.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _free_port() -> int:
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def test_sync_with_a_ralph_lrs(db, tmp_path):
    ralph = os.environ.get("IRATRAINER_RALPH") or shutil.which("ralph")
    if not ralph or not Path(ralph).exists():
        pytest.skip("Ralph LRS not installed (.ci/run installs it in its own virtual environment)")
    env = dict(os.environ, RALPH_APP_DIR=str(tmp_path / "ralph"), RALPH_RUNSERVER_BACKEND="fs")
    subprocess.run([ralph, "auth", "-u", "iratrainer", "-p", "secret", "-s", "all", "-M", "mailto:lrs@example.org",
                    "-w"], env=env, check=True, capture_output=True, timeout=120)
    port = _free_port()
    (tmp_path / "fs").mkdir()
    srv = subprocess.Popen([ralph, "runserver", "-b", "fs", "--fs-default-directory-path", str(tmp_path / "fs"),
                            "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/__heartbeat__", timeout=1).read()
                break
            except OSError:
                time.sleep(0.5)
        s = Store(db)
        tid = s.add_trainee("Alice", "DES 2026", email="alice@example.org")
        case = load_case(default_case_path())
        sid = s.start_session(tid, case, 0, "test")
        s.finish_session(sid, {"outcome": "success", "tici": "3", "time_s": 600.0}, {"total": 88.0, "passed": True})
        with pytest.raises(RecordsError, match="rejected the credentials"):
            sync(s, url, "iratrainer", "wrong")
        with pytest.raises(RecordsError, match="kept for the next sync"):
            sync(s, f"http://127.0.0.1:{_free_port()}", "iratrainer", "secret")
        assert sync(s, url, "iratrainer", "secret") == (3, 0)
        assert sync(s, url, "iratrainer", "secret") == (0, 3)  # idempotent
        req = urllib.request.Request(url + "/xAPI/statements?limit=10", headers={
            "Authorization": "Basic aXJhdHJhaW5lcjpzZWNyZXQ=", "X-Experience-API-Version": "1.0.3"})
        got = json.loads(urllib.request.urlopen(req, timeout=10).read())["statements"]
        assert {st["id"] for st in got} == {st["id"] for st in statements(s)}
    finally:
        srv.terminate()
        srv.wait(timeout=30)


@pytest.mark.slow
def test_construct_validity_expert_beats_novice_over_ten_seeds():
    from iratrainer.bench import construct_validity

    rows = construct_validity(seeds=range(10))
    for key in ("score", "procedure_time_s", "fluoro_time_s", "dap_gy_cm2", "contrast_ml"):
        assert rows[key]["expert_better"], (key, rows[key])


def test_the_runs_finding_allows_the_protocol_runs_of_each_pass():
    """Six runs for one pass, two more (microcatheter and control runs) per further pass."""
    from iratrainer.scoring.rubric import checklist

    def codes(runs: int, passes: int) -> set[str]:
        return {f.code for f in checklist({"dsa_runs": runs, "passes": passes}, [], "thrombectomy")}

    assert "runs" not in codes(6, 1) and "runs" in codes(7, 1)
    assert "runs" not in codes(8, 2) and "runs" in codes(9, 2)
