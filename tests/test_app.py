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
    # pygame's built-in font has Latin-1 and a few typographic signs, not arrows or triangles
    glyphs = {chr(c) for c in range(32, 256)} | set("—•’…œŒ")
    for key, d in STRINGS.items():
        assert set(d["fr"] + d["en"]) <= glyphs, (key, set(d["fr"] + d["en"]) - glyphs)


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
    # a click at three quarters of the timeline seeks there
    from iratrainer.app.trainer import TIMELINE, TrainerApp

    x0, x1, y = TIMELINE
    app = TrainerApp(None, None, None, True, [{"at_s": 0.1, "press": "SPACE"},
                                              {"at_s": 0.2, "click": [x0 + 0.75 * (x1 - x0), y + 4]},
                                              {"at_s": 0.3, "quit": True}], None, str(tmp_path / "none.toml"))
    app.open_replay(sid[:8])
    app.run()
    assert app.proc.time_s == pytest.approx(0.75 * app.replay_end, abs=0.1)


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


FLUORO_SCRIPT = [
    {"at_s": 0.3, "press": "RETURN"}, {"at_s": 0.5, "press": "I"},
    {"at_s": 0.7, "hold": "UP", "for_s": 2.0}, {"at_s": 0.7, "hold": "SPACE", "for_s": 2.2},
    {"at_s": 3.0, "screenshot": "fluoro"}, {"at_s": 3.1, "quit": True},
]


def _run(tmp_path, name, script, **kw):
    from iratrainer.app.trainer import TrainerApp

    app = TrainerApp("l-m1-type1-femoral", headless=True, script=script, screenshot_dir=str(tmp_path / name),
                     settings_path=str(tmp_path / "none.toml"), **kw)
    app.run()
    return app


def test_opengl_window_draws_what_the_software_display_draws(tmp_path):
    """The OpenGL path (images as float textures, interface blended over) against pygame's
    software path, same inputs and seed: the interface identical, the images equal up to
    the magnification filter (bilinear in GL, nearest in software)."""
    gl = _run(tmp_path, "gl", FLUORO_SCRIPT, display="opengl")
    if gl.gl is None:
        pytest.skip(f"no OpenGL here: {gl.warnings}")
    sw = _run(tmp_path, "sw", FLUORO_SCRIPT, display="software")
    assert sw.gl is None and gl.gl.description.startswith("OpenGL")
    a, b = _png(tmp_path / "gl" / "fluoro.png"), _png(tmp_path / "sw" / "fluoro.png")
    img_a, img_b = a[20:532, 40:552], b[20:532, 40:552]
    assert img_a.std() > 0.05
    assert np.abs(img_a - img_b).mean() < 0.02  # 2 % of the display range
    hud = (slice(540, 800), slice(0, 990))
    assert np.abs(a[hud] - b[hud]).max() < 2.0 / 255.0  # the same interface, pixel for pixel


def test_no_opengl_falls_back_to_software_with_a_notice(tmp_path, monkeypatch):
    from iratrainer.app import glview

    def old_gl(self, pg, size, min_version=(3, 3)):
        raise glview.GlUnavailable("OpenGL 2.1 Mesa is older than 3.3")

    monkeypatch.setattr(glview.GlDisplay, "__init__", old_gl)
    app = _run(tmp_path, "fb", [{"at_s": 0.1, "press": "ESCAPE"}, {"at_s": 0.2, "screenshot": "menu"},
                                {"at_s": 0.3, "quit": True}], display="auto")
    assert app.gl is None
    assert any("2.1" in w and "Software display" in w for w in app.warnings)
    shot = _png(tmp_path / "fb" / "menu.png")
    assert (shot[H_NOTICE] > 0.4).mean() > 0.01  # the notice is written on the screen


H_NOTICE = (slice(800 - 86, 800 - 62), slice(40, 700))


PAD_SCRIPT = [
    {"at_s": 0.3, "gamepad": {"button": 0}},            # briefing: confirm
    {"at_s": 0.5, "gamepad": {"button": 2}},            # insert the device on the table
    {"at_s": 0.7, "gamepad": {"axis": 1, "value": -1.0}},  # left stick away: advance
    {"at_s": 0.7, "gamepad": {"axis": 5, "value": 1.0}},   # right trigger: fluoroscopy
    {"at_s": 3.7, "gamepad": {"axis": 1, "value": 0.0}},
    {"at_s": 3.7, "gamepad": {"axis": 3, "value": 0.5}},   # right stick half right: torque
    {"at_s": 4.7, "gamepad": {"axis": 3, "value": 0.0}},
    {"at_s": 4.8, "gamepad": {"axis": 5, "value": -1.0}},
    {"at_s": 4.9, "gamepad": {"hat": [0, 1]}},          # cross up: next pulse rate
    {"at_s": 5.0, "screenshot": "pad"}, {"at_s": 5.1, "quit": True},
]


def test_gamepad_two_sticks_two_hands(tmp_path):
    app = _run(tmp_path, "pad", PAD_SCRIPT)
    dev = app.proc.stack.devices[0]
    assert dev.inserted_mm == pytest.approx(3.0 * 40.0, abs=1.5)  # full stick = 40 mm/s for 3 s
    deg_s = (0.5 - 0.15) / (1 - 0.15) * 180.0  # dead zone 0.15, full stick 180 deg/s
    assert dev.phi_deg == pytest.approx(deg_s * 1.0, abs=deg_s / 30 + 0.5)
    assert app.proc.dose.fluoro_time_s == pytest.approx(2 * 4.1, abs=0.4)  # biplane, trigger held 4.1 s
    assert app.proc.pulse_pps == 15.0
    assert _png(tmp_path / "pad" / "pad.png")[20:532, 40:552].std() > 0.05


def test_gamepad_remapping_and_bad_mapping(tmp_path):
    p = tmp_path / "settings.toml"
    p.write_text('[gamepad]\nadvance_axis = 0\ndeadzone = 0.3\n[gamepad.buttons]\n3 = "dsa"\n', encoding="utf-8")
    s = load_settings(p)
    assert s.gamepad.advance_axis == 0 and s.gamepad.deadzone == 0.3 and s.gamepad.buttons == {3: "dsa"}
    from iratrainer.app.controls import Gamepad

    pad = Gamepad(s.gamepad)
    pad.axis(0, -0.65)
    assert pad.advance_mm_s == pytest.approx((0.65 - 0.3) / 0.7 * 40.0)
    pad.axis(0, 0.2)
    assert pad.advance_mm_s == 0.0 and not pad.fluoro
    p.write_text('[gamepad.buttons]\n0 = "fly"\n', encoding="utf-8")
    warnings = []
    s = load_settings(p, warnings.append)
    assert s.gamepad.buttons[0] == "dsa" and "gamepad.buttons.0" in warnings[0] and str(p) in warnings[0]


def test_overview_projection_and_drawing():
    import pygame

    from iratrainer.anatomy.atlas import build_atlas
    from iratrainer.app.overview import Overview, project

    # from the front: the patient's left on the viewer's right, head up; turned 90 degrees
    # toward the patient's left, anterior points come to the viewer's left... of the right side
    v = project(np.array([[10.0, 0, 0], [0, 0, 10.0], [0, -10.0, 0]]), 0.0, 0.0)
    assert np.allclose(v[0], [10, 0, 0]) and np.allclose(v[1], [0, -10, 0]) and np.allclose(v[2], [0, 0, 10])
    v = project(np.array([[0, -10.0, 0]]), 90.0, 0.0)  # seen from the patient's left: anterior is on the left
    assert np.allclose(v[0], [-10, 0, 0], atol=1e-12)
    tree = build_atlas()
    ov = Overview(tree, 240)
    surf = pygame.Surface((300, 300))
    tip = tree.point_at("L_ICA", 30.0)
    wire = np.array([tip - [0, 0, 40.0], tip])
    ov.draw(pygame, surf, 30, 30, 0.0, [("microwire", wire)], [], focus_mm=tip)
    a = pygame.surfarray.array3d(surf)
    x, y = ov.to_px(tip[None], -180.0, 30, 30, ov.centre_for(tip))[0]
    near = a[int(x) - 3:int(x) + 4, int(y) - 3:int(y) + 4]
    assert (near == 255).all(axis=2).any()  # the white wire is drawn at its tip
    assert (a[:30] == 0).all() and (a[271:] == 0).all()  # nothing outside the panel


def test_exam_mode_hides_the_overview_and_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("IRATRAINER_DB", str(tmp_path / "r.db"))
    assert main(["trainee", "add", "Jules"]) == 0
    practice = _run(tmp_path, "practice", FLUORO_SCRIPT, display="software")
    exam = _run(tmp_path, "exam", FLUORO_SCRIPT + [{"at_s": 2.9, "press": "O"}], display="software", exam=True,
                trainee="Jules")
    panel = (slice(545, 780), slice(1002, 1238))

    def red(img):  # vessels of the overview are dark red
        return ((img[..., 0] > 0.3) & (img[..., 1] < 0.25)).mean()

    import matplotlib.image as mpimg

    p = np.asarray(mpimg.imread(tmp_path / "practice" / "fluoro.png"))[panel]
    e = np.asarray(mpimg.imread(tmp_path / "exam" / "fluoro.png"))[panel]
    assert red(p) > 0.002 and red(e) == 0.0
    assert practice.show_overview and not exam.show_overview
    from iratrainer.records.store import Store

    rows = Store(tmp_path / "r.db").sessions()
    assert [r["mode"] for r in rows] == ["exam"]


def test_choose_or_create_the_trainee_in_the_window(tmp_path):
    from iratrainer.app.trainer import TrainerApp
    from iratrainer.records.store import Store

    db = tmp_path / "r.db"
    Store(db).add_trainee("Ana Diallo")
    script = [
        {"at_s": 0.1, "screenshot": "who"},
        {"at_s": 0.2, "press": "DOWN"}, {"at_s": 0.3, "press": "RETURN"},   # "+ New trainee"
        {"at_s": 0.4, "text": "Ana "}, {"at_s": 0.5, "text": "Diallo"},
        {"at_s": 0.6, "press": "RETURN"},                                     # already exists: said, kept typing
        {"at_s": 0.7, "screenshot": "exists"},
        {"at_s": 0.8, "press": "BACKSPACE"}, {"at_s": 0.85, "press": "BACKSPACE"},
        {"at_s": 0.9, "text": "né Léa"}, {"at_s": 1.0, "press": "RETURN"},   # "Ana Dialné Léa"
        {"at_s": 1.1, "screenshot": "menu"}, {"at_s": 1.2, "quit": True},
    ]
    app = TrainerApp(headless=True, script=script, screenshot_dir=str(tmp_path / "t"), db=str(db),
                     settings_path=str(tmp_path / "none.toml"), display="software")
    app.run()
    assert app.trainee == "Ana Dialné Léa" and app.state == "menu"
    assert {r["name"] for r in Store(db).trainees()} == {"Ana Dialné Léa", "Ana Diallo"}
    who, exists = _png(tmp_path / "t" / "who.png"), _png(tmp_path / "t" / "exists.png")
    assert (who[100:200] > 0.5).mean() > 0.003  # the list is written
    assert (exists[150:250] > 0.5).mean() > 0.002  # the error under the field
    # without recording: no trainee, every level open
    app = TrainerApp(headless=True, script=[{"at_s": 0.1, "press": "UP"}, {"at_s": 0.2, "press": "RETURN"},
                                            {"at_s": 0.3, "quit": True}], db=str(db),
                     settings_path=str(tmp_path / "none.toml"), display="software")
    app.run()
    assert app.trainee is None and app.state == "menu" and app.unlocked == {c.level for c in app.cases}


def test_dsa_run_is_kept_for_review_and_the_pedal_ends_it(tmp_path):
    script = [{"at_s": 0.2, "press": "RETURN"}, {"at_s": 0.3, "press": "I"}, {"at_s": 0.5, "hold": "UP", "for_s": 3},
              {"at_s": 3.6, "press": "D"}, {"at_s": 12.8, "press": "W"},
              {"at_s": 13.0, "screenshot": "r1"}, {"at_s": 13.5, "screenshot": "r2"},
              {"at_s": 14.0, "hold": "SPACE", "for_s": 0.3}, {"at_s": 14.5, "quit": True}]
    app = _run(tmp_path, "rv", script, display="software")
    from iratrainer.scenario.procedure import DSA_FPS

    # an 8 s run at DSA_FPS: the mask, then the contrast frames, on both planes
    assert [len(app.dsa_run[p]) for p in ("frontal", "lateral")] == [round(8 * DSA_FPS) - 1] * 2
    r1, r2 = _png(tmp_path / "rv" / "r1.png"), _png(tmp_path / "rv" / "r2.png")
    assert np.abs(r1[20:532, 40:552] - r2[20:532, 40:552]).mean() > 0.002  # the loop plays
    assert not app.review  # the pedal brought the live image back


def test_carm_rotation_zoom_and_collimation_from_the_keys_and_the_pad(tmp_path):
    script = [{"at_s": 0.2, "press": "RETURN"}, {"at_s": 0.3, "press": "I"},
              {"at_s": 0.5, "hold": "C", "for_s": 2.0}, {"at_s": 0.5, "hold": "RIGHT", "for_s": 2.0},  # LAO
              {"at_s": 2.8, "press": "K"},                                                           # lateral
              {"at_s": 2.9, "press": "Z"}, {"at_s": 3.0, "press": "Z"},                               # 30, 22
              {"at_s": 3.1, "press": "["}, {"at_s": 3.2, "press": "["},                               # iris 0.8
              {"at_s": 3.4, "gamepad": {"axis": 2, "value": 1.0}},                                   # LT: C-arm
              {"at_s": 3.4, "gamepad": {"axis": 1, "value": -1.0}},                                  # cranial
              {"at_s": 4.4, "gamepad": {"axis": 1, "value": 0.0}}, {"at_s": 4.4, "gamepad": {"axis": 2, "value": -1}},
              {"at_s": 4.6, "press": "T"},                                                           # head
              {"at_s": 4.9, "press": "H"}, {"at_s": 5.0, "screenshot": "help"}, {"at_s": 5.1, "quit": True}]
    app = _run(tmp_path, "carm", script, display="software")
    assert app.proc.table_user == "head"
    pl = app.proc.planes
    assert pl["frontal"].lao_deg == pytest.approx(2.0 * 15.0, abs=0.6)  # 15 deg/s for 2 s, the last angle sent
    assert pl["lateral"].cran_deg == pytest.approx(1.0 * 15.0, abs=0.6) and pl["lateral"].lao_deg == 90.0
    assert pl["frontal"].cran_deg == 0.0
    assert pl["lateral"].fov_cm == 22.0 and pl["lateral"].collimation == pytest.approx(0.8)
    assert app.proc.stack.devices[0].inserted_mm == 0.0  # the hands were on the C-arm
    kinds = [e.kind for e in app.proc.events]
    assert kinds.count("zoom") == 2 and kinds.count("collimate") == 2 and kinds.count("carm") >= 10


def test_hand_injection_key_puffs_contrast(tmp_path):
    script = [{"at_s": 0.2, "press": "RETURN"}, {"at_s": 0.3, "press": "I"}, {"at_s": 0.5, "hold": "UP", "for_s": 2},
              {"at_s": 2.8, "press": "J"}, {"at_s": 3.5, "quit": True}]
    app = _run(tmp_path, "puff", script, display="software")
    inj = [e for e in app.proc.events if e.kind == "inject"]
    assert len(inj) == 1 and inj[0].data["volume_ml"] == 3.0 and app.proc.contrast_ml == 3.0
