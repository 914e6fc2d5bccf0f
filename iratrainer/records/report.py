"""HTML reports: a trainee's learning curves and sessions; a cohort's status.

Self-contained HTML (plots embedded as PNG, made with matplotlib's Agg backend), in French
and English side by side where it matters. The trainee report plots each metric across
sessions against the cohort median of the same case and the proficiency benchmark; the
cohort report lists every trainee's level, passes and last score, and flags who is behind
(a level below the cohort's median level, or no completed session).
"""

from __future__ import annotations

import base64
import html
import io
import statistics
from pathlib import Path
from typing import Any

from iratrainer.records.curriculum import progress
from iratrainer.records.store import RecordsError, Store
from iratrainer.scenario.case import LEVELS, list_cases
from iratrainer.scoring.rubric import PASS_MARK, REFERENCE

__all__ = ["trainee_report", "cohort_report"]

CURVES = [("score", "Score / 100", "score"), ("procedure_time_s", "Procedure time (s) / Durée (s)", 0),
          ("fluoro_time_s", "Fluoroscopy (s) / Scopie (s)", 1), ("dap_gy_cm2", "DAP (Gy·cm²) / PDS", 2),
          ("contrast_ml", "Contrast (mL) / Contraste", 3)]

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}"
         ".behind{background:#fde2e2}.ok{background:#e2f5e2}")


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _write(out: Path, text: str) -> Path:
    from iratrainer.anatomy.io import atomic_write_bytes
    from iratrainer.errors import OutputError

    try:
        return atomic_write_bytes(out, text.encode("utf-8"))
    except (OSError, OutputError) as exc:
        raise RecordsError(f"{out}: cannot write the report ({exc})") from None


def trainee_report(store: Store, name: str, out: str | Path) -> Path:
    """Learning curves and the sessions of ``name``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tid = store.trainee_id(name)
    sessions = [s for s in store.sessions(trainee_id=tid)]
    cohort = next((t["cohort"] for t in store.trainees() if t["id"] == tid), None)
    peers = [s for s in store.sessions(cohort=cohort)] if cohort else sessions
    metrics = {s["id"]: store.metrics_of(s["id"]) for s in peers}
    done = [s for s in sessions if s["status"] == "completed"]
    imgs = []
    for key, label, ref in CURVES:
        fig, ax = plt.subplots(figsize=(5.2, 2.8))
        xs = list(range(1, len(done) + 1))
        ys = [(s["score"] if key == "score" else metrics[s["id"]].get(key)) for s in done]
        ax.plot(xs, ys, "o-", label=name)
        med = []
        for s in done:
            vals = [(p["score"] if key == "score" else metrics[p["id"]].get(key)) for p in peers
                    if p["case_id"] == s["case_id"] and p["status"] == "completed"]
            vals = [v for v in vals if v is not None]
            med.append(statistics.median(vals) if vals else None)
        ax.plot(xs, med, "s--", color="grey", label="cohort median / médiane")
        if ref == "score":
            ax.axhline(PASS_MARK, color="green", lw=1, label="proficiency / seuil")
        elif done:
            ax.axhline(REFERENCE.get(done[-1]["level"] or "thrombectomy", REFERENCE["thrombectomy"])[ref],
                       color="green", lw=1, label="benchmark / référence")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("session")
        ax.legend(fontsize=7)
        imgs.append(_png(fig))
        plt.close(fig)
    prog = progress(sessions, list_cases())
    rows = "".join(
        f"<tr><td>{html.escape(s['started_at'] or '')}</td><td>{html.escape(s['case_id'])}</td>"
        f"<td>{html.escape(s['status'])}</td><td>{html.escape(str(s['outcome']))}</td>"
        f"<td>{_fmt(s['score'])}</td>"
        f"<td>{'✔' if s['passed'] else ''}</td><td><code>{s['id'][:8]}</code></td></tr>" for s in sessions)
    levels = "".join(f"<li>{lv['level']}: {'ouvert / unlocked' if lv['unlocked'] else 'verrouillé / locked'}, "
                     f"{len(lv['passed'])}/{lv['needed']} réussis / passed</li>" for lv in prog)
    debrief = ""
    if done:
        details = metrics.get(done[-1]["id"], {}).get("score_details") or {}
        for lang, title in (("fr", "Points à travailler (dernière session)"), ("en", "To improve (last session)")):
            items = details.get("debrief", {}).get(lang, []) if isinstance(details, dict) else []
            if items:
                debrief += f"<h3>{title}</h3><ol>" + "".join(
                    f"<li>{html.escape(x['text'])} <small>(t = {x['t_s']:.0f} s)</small></li>" for x in items) + "</ol>"
    body = (f"<h1>{html.escape(name)}</h1><p>Cohorte / cohort: {html.escape(str(cohort))}</p>{debrief}"
            f"<h2>Progression / progress</h2><ul>{levels}</ul><h2>Courbes / learning curves</h2>"
            + "".join(f'<img src="{i}" alt="curve">' for i in imgs)
            + "<h2>Sessions</h2><table><tr><th>date</th><th>case</th><th>status</th><th>outcome</th><th>score</th>"
              f"<th>pass</th><th>id</th></tr>{rows}</table>")
    return _write(Path(out), f"<!doctype html><html lang='fr'><meta charset='utf-8'><title>iratrainer — "
                             f"{html.escape(name)}</title><style>{STYLE}</style><body>{body}</body></html>")


def cohort_report(store: Store, cohort: str, out: str | Path) -> Path:
    """Every trainee of ``cohort``: level reached, passes, last score; who is behind."""
    people = [t for t in store.trainees() if t["cohort"] == cohort]
    if not people:
        raise RecordsError(f"no trainee in cohort '{cohort}'")
    cases = list_cases()
    status = []
    for t in people:
        ss = store.sessions(trainee_id=t["id"])
        prog = progress(ss, cases)
        level = max((k for k, lv in enumerate(prog) if lv["unlocked"]), default=0)
        last = next((s["score"] for s in reversed(ss) if s["status"] == "completed"), None)
        status.append((t, level, sum(1 for s in ss if s["passed"]), len(ss), last))
    med = statistics.median([lvl for _, lvl, *_ in status])
    rows = ""
    for t, lvl, npass, n, last in status:
        behind = lvl < med or n == 0
        rows += (f"<tr class='{'behind' if behind else 'ok'}'><td>{html.escape(t['name'])}</td><td>{LEVELS[lvl]}</td>"
                 f"<td>{npass}</td><td>{n}</td><td>{_fmt(last)}</td>"
                 f"<td>{'en retard / behind' if behind else ''}</td></tr>")
    body = (f"<h1>Cohorte / cohort {html.escape(cohort)}</h1><table><tr><th>trainee</th><th>level</th>"
            f"<th>passed</th><th>sessions</th><th>last score</th><th></th></tr>{rows}</table>")
    return _write(Path(out), f"<!doctype html><html lang='fr'><meta charset='utf-8'><title>iratrainer — "
                             f"{html.escape(cohort)}</title><style>{STYLE}</style><body>{body}</body></html>")
