"""The trainer app, driven headless by recorded inputs; tests look at the screenshots (issue: the app)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from iratrainer.app.i18n import STRINGS, tr
from iratrainer.app.trainer import AppError, load_settings
from iratrainer.cli import main


def _png(path):
    import matplotlib.image as mpimg

    a = np.asarray(mpimg.imread(path), dtype=float)
    return a[..., :3].mean(axis=2) if a.ndim == 3 else a


def test_every_string_in_both_languages_with_the_same_placeholders():
    for key, d in STRINGS.items():
        assert d.get("fr") and d.get("en"), key
        fields = [set(re.findall(r"{(\w+)", d[lang])) for lang in ("fr", "en")]
        assert fields[0] == fields[1], key
    assert tr("hud_contrast", "fr", ml=12) == "Contraste 12 mL"


def test_corrupt_settings_fall_back_with_a_warning(tmp_path):
    p = tmp_path / "settings.toml"
    p.write_text("language = [", encoding="utf-8")
    warnings = []
    s = load_settings(p, warnings.append)
    assert s.keys["fluoro"] == "SPACE" and len(warnings) == 1 and str(p) in warnings[0]
    p.write_text('language = "fr"\n[keys]\nfluoro = "f"\n', encoding="utf-8")
    s = load_settings(p, warnings.append)
    assert s.language == "fr" and s.keys["fluoro"] == "F"


SCRIPT = [
    {"at_s": 0.2, "screenshot": "menu"},
    {"at_s": 0.3, "press": "RETURN"},
    {"at_s": 0.5, "screenshot": "briefing"},
    {"at_s": 0.6, "press": "RETURN"},
    {"at_s": 0.8, "press": "I"},
    {"at_s": 1.0, "hold": "UP", "for_s": 3.0},
    {"at_s": 1.0, "hold": "SPACE", "for_s": 3.5},
    {"at_s": 4.3, "screenshot": "fluoro"},
    {"at_s": 4.5, "press": "ESCAPE"},
    {"at_s": 4.6, "screenshot": "paused"},
    {"at_s": 4.7, "press": "Q"},
    {"at_s": 5.0, "screenshot": "debrief"},
    {"at_s": 5.2, "quit": True},
]


def test_headless_play_shows_menu_fluoroscopy_and_debrief(tmp_path, monkeypatch):
    monkeypatch.setenv("IRATRAINER_DB", str(tmp_path / "r.db"))
    assert main(["trainee", "add", "Inès"]) == 0
    script = tmp_path / "s.jsonl"
    script.write_text("\n".join(json.dumps(r) for r in SCRIPT), encoding="utf-8")
    shots = tmp_path / "shots"
    assert main(["play", "--headless", "--script", str(script), "--screenshot-dir", str(shots),
                 "--trainee", "Inès", "--settings", str(tmp_path / "none.toml")]) == 0
    assert {p.stem for p in shots.glob("*.png")} == {"menu", "briefing", "fluoro", "paused", "debrief"}
    fl = _png(shots / "fluoro.png")
    frontal = fl[20:532, 40:552]
    assert frontal.std() > 0.05  # an X-ray image, not a blank panel
    menu = _png(shots / "menu.png")
    assert (menu > 0.5).mean() > 0.005  # text drawn
    assert not np.allclose(_png(shots / "paused.png"), fl)
    from iratrainer.records.store import Store

    s = Store(tmp_path / "r.db")
    rows = s.sessions()
    assert len(rows) == 1 and rows[0]["status"] == "aborted"
    assert any(e["kind"] == "insert" for e in s.events_of(rows[0]["id"]))


def test_bad_script_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json", encoding="utf-8")
    assert main(["play", "--headless", "--script", str(bad)]) == 2
    assert "not a script of JSON lines" in capsys.readouterr().err


def test_no_display_without_headless_says_how(monkeypatch):
    from iratrainer.app.trainer import TrainerApp

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(AppError, match="--headless"):
        TrainerApp()


def test_replay_of_a_recorded_session(tmp_path, monkeypatch):
    monkeypatch.setenv("IRATRAINER_DB", str(tmp_path / "r.db"))
    assert main(["trainee", "add", "Inès"]) == 0
    assert main(["run", "nav-arch-lcca", "--headless", "--autopilot", "expert", "--no-render", "--out",
                 str(tmp_path / "run"), "--trainee", "Inès"]) == 0
    sid = json.loads((tmp_path / "run" / "result.json").read_text())["session_id"]
    script = tmp_path / "s.jsonl"
    rows = [{"at_s": 0.1, "press": "UP"}, {"at_s": 0.2, "press": "RIGHT"}, {"at_s": 0.3, "press": "RIGHT"},
            {"at_s": 1.5, "screenshot": "t20"}, {"at_s": 1.6, "quit": True}]
    script.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert main(["replay", sid[:8], "--headless", "--script", str(script), "--screenshot-dir", str(tmp_path / "sh"),
                 "--settings", str(tmp_path / "none.toml")]) == 0
    img = _png(tmp_path / "sh" / "t20.png")
    assert img[20:532, 40:552].std() > 0.05  # the fluoroscopy of the session at ~20 s
    assert (img[H_TIMELINE] > 0.5).any()  # the timeline with its cursor


H_TIMELINE = slice(735, 760)


def test_replay_unknown_session(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IRATRAINER_DB", str(tmp_path / "r.db"))
    script = tmp_path / "s.jsonl"
    script.write_text('{"at_s": 0.1, "quit": true}', encoding="utf-8")
    assert main(["replay", "deadbeef", "--headless", "--script", str(script)]) == 2
    assert "no such session" in capsys.readouterr().err


def test_mouse_wheel_advances_and_drag_turns(tmp_path):
    from iratrainer.app.trainer import TrainerApp

    script = [{"at_s": 0.1, "press": "RETURN"}, {"at_s": 0.2, "press": "I"}, {"at_s": 0.3, "wheel": 10},
              {"at_s": 0.4, "drag": 90}, {"at_s": 2.0, "quit": True}]
    app = TrainerApp("nav-arch-lcca", headless=True, script=script, settings_path=str(tmp_path / "none.toml"))
    app.run()
    dev = app.proc.stack.devices[0]
    assert dev.inserted_mm == pytest.approx(50.0, abs=0.5) and dev.phi_deg == pytest.approx(90.0, abs=0.5)


def test_resume_after_a_crash_continues_the_same_session(tmp_path, monkeypatch):
    """A session killed mid-way (records: aborted) is resumed: its controls replayed, then live."""
    from iratrainer.records.store import Store

    monkeypatch.setenv("IRATRAINER_DB", str(tmp_path / "r.db"))
    assert main(["trainee", "add", "Inès"]) == 0
    script = tmp_path / "s.jsonl"
    rows = [{"at_s": 0.1, "press": "RETURN"}, {"at_s": 0.2, "press": "I"}, {"at_s": 0.3, "hold": "UP", "for_s": 3.0},
            {"at_s": 3.5, "quit": True}]
    script.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    from iratrainer.app.trainer import TrainerApp

    app = TrainerApp("nav-arch-lcca", "Inès", None, True, str(script), None, str(tmp_path / "none.toml"))
    app._abort = lambda: None  # the process dies: nothing closes the session
    app.run()
    inserted_before = app.proc.stack.devices[0].inserted_mm
    s = Store(tmp_path / "r.db")  # reopening marks it aborted
    (row,) = s.sessions()
    assert row["status"] == "aborted"
    s.close()
    more = tmp_path / "m.jsonl"
    more.write_text("\n".join(json.dumps(r) for r in [{"at_s": 0.1, "hold": "UP", "for_s": 1.0},
                                                       {"at_s": 1.5, "press": "E"}, {"at_s": 2.0, "quit": True}]))
    app2 = TrainerApp(None, None, None, True, str(more), None, str(tmp_path / "none.toml"))
    app2.resume(row["id"][:8])
    from iratrainer.records.recorder import FLUSH_EVERY_S

    resumed = app2.proc.stack.devices[0].inserted_mm
    assert 0.0 < resumed <= inserted_before  # at most the last batch (2 s of a 40 mm/s push) is lost
    assert inserted_before - resumed <= 40.0 * (FLUSH_EVERY_S + 0.1) + 1.0
    app2.run()
    s = Store(tmp_path / "r.db")
    (row2,) = s.sessions()
    assert row2["id"] == row["id"] and row2["status"] == "completed"
    assert any(e["kind"] == "end" for e in s.events_of(row["id"]))
