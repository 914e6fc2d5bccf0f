"""The curriculum: levels unlocked by passing cases of the level before.

Levels, in order: navigation basics → arch → intracranial navigation → thrombectomy.
The first is always open; level k+1 opens when the trainee has passed
``PASSES_TO_UNLOCK`` different cases of level k (a pass is the rubric's proficiency
benchmark: score ≥ 70, success, no complication).
"""

from __future__ import annotations

from typing import Any

from iratrainer.scenario.case import LEVELS

__all__ = ["PASSES_TO_UNLOCK", "progress"]

PASSES_TO_UNLOCK = 2


def progress(sessions: list[dict[str, Any]], cases: list[Any]) -> list[dict[str, Any]]:
    """Per level: cases, cases passed, best scores, unlocked or not."""
    passed_by_level: dict[str, set[str]] = {lvl: set() for lvl in LEVELS}
    best: dict[str, float] = {}
    for s in sessions:
        if s.get("status") != "completed":
            continue
        if s.get("score") is not None:
            best[s["case_id"]] = max(best.get(s["case_id"], 0.0), float(s["score"]))
        if s.get("passed") and s.get("level") in passed_by_level:
            passed_by_level[s["level"]].add(s["case_id"])
    out = []
    unlocked = True
    for lvl in LEVELS:
        lvl_cases = [c for c in cases if c.level == lvl]
        out.append({"level": lvl, "unlocked": unlocked, "passed": sorted(passed_by_level[lvl]),
                    "needed": min(PASSES_TO_UNLOCK, len(lvl_cases)),
                    "cases": [{"id": c.id, "best_score": best.get(c.id), "passed": c.id in passed_by_level[lvl]}
                              for c in lvl_cases]})
        unlocked = unlocked and len(passed_by_level[lvl]) >= min(PASSES_TO_UNLOCK, len(lvl_cases))
    return out
