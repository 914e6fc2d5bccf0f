"""The trainer window: case menu, briefing, the procedure under biplane fluoroscopy, debrief.

A pygame window (1280×800). The procedure runs at its own fixed step (1/30 s) with a
catch-up cap (at most 4 steps per frame: simulation time never slows unless the machine
falls far behind, and then it is reported); fluoroscopy images are made at the pulse
rate by the NumPy renderer and shown until the next pulse (last-image-hold); the HUD is
drawn every frame. Input acts on the next step, and the image it causes appears at the
next pulse.

``--headless --script FILE --screenshot-dir DIR`` drives the same app with recorded
inputs (JSON lines: ``{"at_s": 2.0, "press": "RETURN"}``, ``{"at_s": 3.0, "hold": "UP",
"for_s": 2.0}``, ``{"at_s": 6.0, "screenshot": "fluoro"}``, ``{"at_s": 7.0, "wheel": 4}`` (mouse wheel notches),
``{"at_s": 8.0, "drag": 90}`` (horizontal drag, pixels), ``{"at_s": 9.0, "quit": true}``)
on SDL's offscreen driver, at exactly one frame per 1/30 s of app time, and saves the
screenshots as PNG.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from iratrainer.app.controls import DEFAULT_KEYS, Gamepad, Settings, load_settings
from iratrainer.app.i18n import default_language, tr
from iratrainer.errors import IratrainerError

__all__ = ["TrainerApp", "AppError", "Settings", "load_settings", "DEFAULT_KEYS", "DEMO_SCRIPT"]

# what `iratrainer` shows on a machine without a display: the default case's briefing,
# a few seconds of biplane fluoroscopy while the guide goes in, and the help overlay
DEMO_SCRIPT = [
    {"at_s": 0.3, "screenshot": "1-briefing"}, {"at_s": 0.4, "press": "RETURN"}, {"at_s": 0.6, "press": "I"},
    {"at_s": 0.8, "hold": "UP", "for_s": 2.5}, {"at_s": 0.8, "hold": "SPACE", "for_s": 2.8},
    {"at_s": 3.7, "screenshot": "2-fluoroscopy"}, {"at_s": 3.8, "press": "H"}, {"at_s": 3.9, "screenshot": "3-help"},
    {"at_s": 4.0, "quit": True},
]

W, H = 1280, 800
IMG = 512
TIMELINE = (40, W - 40, H - 60)  # replay timeline: left, right, top, pixels
CARM_DEG_S = 15.0
HAND_PUFF_ML, HAND_PUFF_ML_S = 3.0, 3.0  # the hand injector's puff: volume, rate  # C-arm rotation speed, degrees per second
OVERVIEW = 240  # side of the 3-D overview panel, pixels
FPS = 30
MAX_CATCH_UP = 4

class AppError(IratrainerError):
    """The trainer cannot start (no display, a broken script)."""


def _default_settings_path() -> str:
    from platformdirs import user_config_dir

    return str(Path(os.environ.get("IRATRAINER_HOME") or user_config_dir("iratrainer")) / "settings.toml")


def _load_library() -> tuple[list[Any], list[str]]:
    """The shipped cases that load, and one line per case that does not (shown in the menu)."""
    from iratrainer.scenario.case import LEVELS, case_dirs, load_case

    cases, errors = [], []
    for d in case_dirs():
        for f in sorted(d.glob("*.toml")):
            try:
                cases.append(load_case(f))
            except IratrainerError as exc:
                errors.append(str(exc))
    cases.sort(key=lambda c: (LEVELS.index(c.level), c.difficulty, c.id))
    return cases, errors


def _fmt_t(s: float) -> str:
    return f"{int(s) // 60:02d}:{int(s) % 60:02d}"


class TrainerApp:
    """The trainer (see the module docstring).

    Args:
        case_path: start on this case (its briefing) instead of the menu.
        trainee: record sessions for this trainee in the records database.
        db: records database path.
        headless: offscreen, driven by ``script``.
        script: recorded inputs (headless).
        screenshot_dir: where headless screenshots go.
        settings_path: a settings file (default: the user config folder).
        seed: the session seed.
        exam: exam mode: no 3-D overview, recorded as an exam session.
        display: ``auto`` (OpenGL, else software), ``opengl`` or ``software``; default the settings'.
    """

    def __init__(self, case_path: str | None = None, trainee: str | None = None, db: str | None = None,
                 headless: bool = False, script: str | list[dict[str, Any]] | None = None,
                 screenshot_dir: str | None = None,
                 settings_path: str | None = None, seed: int = 0, exam: bool = False,
                 display: str | None = None) -> None:
        if headless:
            os.environ["SDL_VIDEODRIVER"] = "offscreen"
            os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        elif not (sys.platform in ("win32", "darwin") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise AppError(tr("no_display", default_language()))
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        self.headless = headless
        self.warnings: list[str] = []
        self.settings = load_settings(Path(settings_path) if settings_path else None, self.warnings.append)
        self._settings_path = settings_path or _default_settings_path()
        self.lang = self.settings.language
        self.seed = seed
        self.exam = exam
        self.display_mode = display or self.settings.display
        if self.display_mode not in ("auto", "opengl", "software"):
            raise AppError(f"display '{self.display_mode}': choose auto, opengl or software")
        self.show_overview = self.settings.overview and not exam
        self.gamepad = Gamepad(self.settings.gamepad)
        self.gl: Any = None
        self.display_notice = ""
        self.script = (self._load_script(script) if isinstance(script, str) else sorted(
            script, key=lambda r: float(r["at_s"]))) if script else []
        self.shots = Path(screenshot_dir) if screenshot_dir else None
        if self.shots is not None:
            try:
                self.shots.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise AppError(f"{self.shots}: cannot create the screenshot folder ({exc.strerror or exc})") from None
        from iratrainer.scenario.case import load_case, resolve_case

        self.cases, self.case_errors = _load_library()
        self.store = None
        self._db = db
        self.trainee = trainee
        if trainee:
            from iratrainer.records.store import Store

            self.store = Store(db)
            self.store.trainee_id(trainee)
        self.unlocked = self._unlocked_levels()
        self.sel = 0
        self.state = "menu" if (trainee or case_path) else "trainee"  # who is training, first
        self.trainee_sel = 0
        self.new_name = ""
        self.trainee_error = ""
        self.case = None
        if case_path:
            self.case = load_case(resolve_case(case_path))
            self.state = "briefing"
        self.proc: Any = None
        self.help = False
        self.paused = False
        self.message = ""
        self.message_until = 0.0
        self.score: Any = None
        self.latency_frames: list[int] = []
        self.mouse_advance_mm = 0.0
        self.mouse_rotate_deg = 0.0
        self.frame_times: list[float] = []
        self.app_time = 0.0
        self.review_t0 = 0.0
        self._text_cache: dict[tuple[str, int, tuple[int, int, int]], Any] = {}

    # ------------------------------------------------------------------ script
    @staticmethod
    def _load_script(path: str) -> list[dict[str, Any]]:
        p = Path(path)
        try:
            rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, ValueError) as exc:
            raise AppError(f"{p}: not a script of JSON lines ({exc})") from None
        for k, r in enumerate(rows):
            if not isinstance(r, dict) or "at_s" not in r:
                raise AppError(f"{p}: line {k + 1}: each line needs at_s")
        return sorted(rows, key=lambda r: float(r["at_s"]))

    def _unlocked_levels(self) -> set[str]:
        from iratrainer.records.curriculum import progress

        if self.store is None or not self.trainee:
            return {c.level for c in self.cases}
        ss = self.store.sessions(trainee_id=self.store.trainee_id(self.trainee))
        return {lv["level"] for lv in progress(ss, self.cases) if lv["unlocked"]}

    # ------------------------------------------------------------------ run
    def run(self, max_seconds: float | None = None) -> int:
        """The main loop; returns the exit code."""
        import pygame

        pygame.init()
        self._open_display(pygame)
        pygame.joystick.init()
        pygame.display.set_caption(tr("title", self.lang))
        self.font = pygame.font.Font(None, 24)
        self.small = pygame.font.Font(None, 20)
        self.big = pygame.font.Font(None, 40)
        self.pg = pygame
        clock = pygame.time.Clock()
        held: set[str] = set()
        t_app = 0.0
        acc = 0.0
        script = list(self.script)
        holds: list[tuple[float, str]] = []
        running = True
        try:
            while running:
                t0 = time.perf_counter()
                events = []
                if self.headless:
                    while script and float(script[0]["at_s"]) <= t_app + 1e-9:
                        r = script.pop(0)
                        if r.get("quit"):
                            running = False
                        elif "press" in r:
                            events.append(("press", str(r["press"]).upper()))
                        elif "hold" in r:
                            held.add(str(r["hold"]).upper())
                            holds.append((t_app + float(r.get("for_s", 1.0)), str(r["hold"]).upper()))
                        elif "screenshot" in r:
                            self._draw()
                            self._screenshot(str(r["screenshot"]))
                        elif "wheel" in r and self.state == "procedure":  # mouse wheel notches
                            self.mouse_advance_mm += 5.0 * float(r["wheel"])
                        elif "drag" in r and self.state == "procedure":  # horizontal drag, pixels
                            self.mouse_rotate_deg += 1.0 * float(r["drag"])
                        elif "click" in r:  # a left click at (x, y), through pygame's queue
                            pos = tuple(int(v) for v in r["click"])
                            for t in (pygame.MOUSEBUTTONDOWN, pygame.MOUSEBUTTONUP):
                                pygame.event.post(pygame.event.Event(t, {"pos": pos, "button": 1}))
                        elif "text" in r:  # typed text (a trainee's name), as the keyboard's TEXTINPUT
                            pygame.event.post(pygame.event.Event(pygame.TEXTINPUT, {"text": str(r["text"])}))
                        elif "gamepad" in r:  # through pygame's queue, as a real pad's events
                            for ev in self._gamepad_events(pygame, r["gamepad"]):
                                pygame.event.post(ev)
                    for until, key in list(holds):
                        if t_app >= until - 1e-9:
                            held.discard(key)
                            holds.remove((until, key))
                    if not script and not holds and running and max_seconds is None:
                        running = False
                for ev in pygame.event.get():
                    if ev.type == pygame.QUIT:
                        running = False
                    elif ev.type == pygame.KEYDOWN:
                        name = pygame.key.name(ev.key).upper()
                        events.append(("press", name))
                        held.add(name)
                    elif ev.type == pygame.TEXTINPUT and self.state == "new_trainee":
                        self.new_name = (self.new_name + ev.text)[:60]
                    elif ev.type == pygame.KEYUP:
                        held.discard(pygame.key.name(ev.key).upper())
                    elif ev.type == pygame.MOUSEBUTTONDOWN and ev.button == 1 and self.state == "replay":
                        self._timeline_click(ev.pos)
                    elif ev.type == pygame.MOUSEMOTION and ev.buttons[0] and self.state == "replay":
                        self._timeline_click(ev.pos)  # dragging the cursor scrubs
                    elif ev.type == pygame.MOUSEWHEEL and self.state == "procedure":
                        self.mouse_advance_mm += 5.0 * ev.y  # 5 mm per notch
                    elif ev.type == pygame.MOUSEMOTION and ev.buttons[0] and self.state == "procedure":
                        self.mouse_rotate_deg += 1.0 * ev.rel[0]  # 1 degree per pixel dragged
                    elif ev.type == pygame.JOYDEVICEADDED:
                        pad = pygame.joystick.Joystick(ev.device_index)
                        self.gamepad.pads[pad.get_instance_id()] = pad
                    elif ev.type == pygame.JOYDEVICEREMOVED:
                        self.gamepad.pads.pop(ev.instance_id, None)
                        self.gamepad.release()
                    elif ev.type == pygame.JOYAXISMOTION:
                        self.gamepad.axis(ev.axis, ev.value)
                    elif ev.type == pygame.JOYBUTTONDOWN:
                        events.extend(("press", k) for k in self._gamepad_keys(self.gamepad.button(ev.button),
                                                                               button=ev.button))
                    elif ev.type == pygame.JOYHATMOTION:
                        events.extend(("press", k) for k in self._hat_keys(ev.value))
                for _, key in events:
                    if not self._press(key):
                        running = False
                # the simulation: fixed steps, at most MAX_CATCH_UP per frame
                dt_frame = 1.0 / FPS
                if self.state == "replay" and self.replay_playing and not self.proc.terminated:
                    for _ in range(int(self.replay_speed)):
                        self._replay_step(render=self.replay_speed <= 4)
                if self.state == "procedure" and not self.paused and self.proc is not None:
                    acc += dt_frame
                    n = 0
                    while acc >= self.proc.dt - 1e-12 and n < MAX_CATCH_UP:
                        self._step(held)
                        acc -= self.proc.dt
                        n += 1
                    if self.proc.terminated:
                        self._finish()
                self._draw()
                self._present()
                self.frame_times.append(time.perf_counter() - t0)
                t_app += dt_frame
                self.app_time = t_app
                if max_seconds is not None and t_app >= max_seconds:
                    running = False
                if not self.headless:
                    clock.tick(FPS)
        finally:
            if self.state == "procedure" and self.proc is not None and not self.proc.terminated:
                self._abort()
            pygame.quit()
        return 0

    def _open_display(self, pygame: Any) -> None:
        """An OpenGL window when asked and possible, else pygame's software display, with a notice."""
        if self.display_mode in ("auto", "opengl"):
            from iratrainer.app.glview import GlDisplay, GlUnavailable

            try:
                self.gl = GlDisplay(pygame, (W, H))
            except GlUnavailable as exc:
                self.display_notice = tr("notice_software", self.lang, why=exc)
                pygame.display.quit()
                pygame.display.init()
            else:
                self.screen = pygame.Surface((W, H), pygame.SRCALPHA)
                if self.gl.software:
                    self.display_notice = tr("notice_no_gpu", self.lang, what=self.gl.description)
        if self.gl is None:
            try:
                self.screen = pygame.display.set_mode((W, H))
            except pygame.error as exc:
                pygame.quit()
                raise AppError(f"{tr('no_display', self.lang)} ({exc})") from None
        if self.display_notice:
            self.warnings.append(self.display_notice)
        self._gl_images: list[tuple[str, Any, tuple[int, int, int, int]]] = []

    def _ui_rects(self) -> list[tuple[int, int, int, int]] | None:
        """Where the interface draws over the OpenGL images: everything but the images, except
        their name labels; the whole window when an overlay (help, pause) covers them."""
        if not self._gl_images or self.help or self.paused:
            return None
        rects = [(0, 0, W, 20), (0, 20 + IMG, W, H - 20 - IMG), (0, 20, 40, IMG)]
        xs = sorted(r[2][0] for r in self._gl_images)
        for k, x in enumerate(xs):
            right = xs[k + 1] if k + 1 < len(xs) else W
            rects.append((x + IMG, 20, right - x - IMG, IMG))
            rects.append((x, 20, 320, 26))  # the plane's name (and the review frame)
        return rects

    def _present(self) -> None:
        if self.gl is not None:
            self.gl.present(self.screen, self._gl_images, ui_rects=self._ui_rects())
        else:
            self.pg.display.flip()

    def _screenshot(self, name: str) -> None:
        if self.shots is None:
            return
        path = str(self.shots / f"{name}.png")
        if self.gl is not None:  # what OpenGL drew, read back from the frame buffer
            self.gl.present(self.screen, self._gl_images, swap=False, ui_rects=self._ui_rects())
            rgb = self.gl.read_rgb()
            self.pg.image.save(self.pg.surfarray.make_surface(np.ascontiguousarray(rgb.transpose(1, 0, 2))), path)
        else:
            self.pg.image.save(self.screen, path)

    # ------------------------------------------------------------------ input
    def _key(self, action: str) -> str:
        return self.settings.keys[action]

    @staticmethod
    def _gamepad_events(pygame: Any, row: dict[str, Any]) -> list[Any]:
        """The pygame events a script's gamepad row stands for: ``{"axis": 1, "value": -1.0}``,
        ``{"button": 0}`` (down and up), ``{"hat": [1, 0]}``."""
        base = {"joy": 0, "instance_id": 0}
        if "axis" in row:
            return [pygame.event.Event(pygame.JOYAXISMOTION, {**base, "axis": int(row["axis"]),
                                                              "value": float(row["value"])})]
        if "button" in row:
            b = {**base, "button": int(row["button"])}
            return [pygame.event.Event(pygame.JOYBUTTONDOWN, b), pygame.event.Event(pygame.JOYBUTTONUP, b)]
        if "hat" in row:
            return [pygame.event.Event(pygame.JOYHATMOTION, {**base, "hat": 0, "value": tuple(row["hat"])})]
        raise AppError(f"gamepad script row {row}: give axis and value, button, or hat")

    def _gamepad_keys(self, action: str | None, button: int) -> list[str]:
        """A gamepad button as the key presses it stands for in the current screen."""
        if self.state != "procedure":  # menus: the first face button confirms, the second goes back
            return {0: ["RETURN"], 1: ["ESCAPE"]}.get(button, [])
        if action in ("next_device", "prev_device"):
            names = [d.name for d in self.proc.stack.devices]
            if names:
                k = names.index(self.hand) if self.hand in names else -1
                self.hand = names[(k + (1 if action == "next_device" else -1)) % len(names)]
            return []
        return [self.settings.keys[action]] if action in self.settings.keys else []

    def _hat_keys(self, value: tuple[int, int]) -> list[str]:
        """The cross pad: menus up/down; in the procedure, the device table (left/right) and the
        pulse rate (up/down)."""
        x, y = value
        if self.state != "procedure":
            return ["UP"] if y > 0 else (["DOWN"] if y < 0 else [])
        k = self.settings.keys
        if x:
            return [k["next_table"] if x > 0 else k["prev_table"]]
        if y:
            return [k["pulse_rate"]]
        return []

    def _press(self, key: str) -> bool:
        """A key went down; False to quit."""
        k = self.settings.keys
        if key == k["language"] and self.state not in ("procedure", "new_trainee"):
            self.lang = "en" if self.lang == "fr" else "fr"
            return True
        if self.state == "trainee":
            return self._press_trainee(key)
        if self.state == "new_trainee":
            if key == "BACKSPACE":
                self.new_name = self.new_name[:-1]
            elif key in ("RETURN", "ENTER"):
                self._create_trainee()
            elif key == "ESCAPE":
                self.state, self.trainee_error = "trainee", ""
            return True
        if self.state == "menu" and key == "T":
            self.state, self.trainee_error = "trainee", ""
            return True
        if self.state == "menu":
            if key == "UP":
                self.sel = max(0, self.sel - 1)
            elif key == "DOWN":
                self.sel = min(len(self.cases) - 1, self.sel + 1)
            elif key in ("RETURN", "ENTER"):
                c = self.cases[self.sel]
                if c.level in self.unlocked:
                    self.case = c
                    self.state = "briefing"
            elif key == "ESCAPE":
                return False
        elif self.state == "briefing":
            if key in ("RETURN", "ENTER"):
                try:
                    self._start()
                except IratrainerError as exc:  # the anatomy or background does not load: back to the list
                    self.message = str(exc)
                    self.state = "menu"
            elif key == "ESCAPE":
                self.state = "menu"
        elif self.state == "procedure":
            if self.paused:
                if key == k["pause"]:
                    self.paused = False
                elif key == k["abort"]:
                    self._abort()
                return True
            if key == k["pause"]:
                self.paused = True
            elif key == k["help"]:
                self.help = not self.help
            elif key == k["language"]:
                self.lang = "en" if self.lang == "fr" else "fr"
            elif key.isdigit() and key != "0":
                idx = int(key) - 1
                if idx < len(self.proc.stack.devices):
                    self.hand = self.proc.stack.devices[idx].name
            elif key == k["next_table"]:
                self.table = (self.table + 1) % len(self.case.devices)
            elif key == k["prev_table"]:
                self.table = (self.table - 1) % len(self.case.devices)
            elif key == k["insert"]:
                self.pending = f"insert:{self.case.devices[self.table]}"
                self.hand = self.case.devices[self.table]
            elif key == k["remove"] and self.hand:
                self.pending = f"remove:{self.hand}"
            elif key == k["dsa"]:
                self.pending = "dsa"
            elif key == k["inject"]:  # a hand injection (a puff under fluoroscopy): 3 mL at 3 mL/s
                self.pending = f"inject:{HAND_PUFF_ML:g}:{HAND_PUFF_ML_S:g}"
            elif key == k["roadmap"]:
                self.pending = "roadmap"
            elif key == k["balloon"]:
                self.pending = f"balloon:{'off' if self.proc.balloon else 'on'}"
            elif key == k["aspiration"]:
                self.pending = f"aspiration:{'off' if self.proc.aspiration else 'on'}"
            elif key == k["biplane"]:
                self.biplane = not self.biplane
            elif key == k["pulse_rate"]:
                from iratrainer.scenario.procedure import PULSE_RATES

                i = PULSE_RATES.index(self.proc.pulse_pps) if self.proc.pulse_pps in PULSE_RATES else 0
                self.pending = f"pulse:{PULSE_RATES[(i + 1) % len(PULSE_RATES)]:g}"
            elif key == k["carm_plane"]:
                if self._carm_goal is not None and not self.pending:
                    self._carm_send()
                self.carm_plane = "lateral" if self.carm_plane == "frontal" else "frontal"
            elif key == k["zoom"]:
                from iratrainer.imaging.geometry import FOV_CM

                cur = self.proc.fov_user.get(self.carm_plane)
                order = [None, *FOV_CM]
                nxt = order[(order.index(cur) + 1) % len(order) if cur in order else 0]
                self.pending = f"zoom:{self.carm_plane}:{'auto' if nxt is None else f'{nxt:g}'}"
            elif key == k["table"]:
                order = ["", "head", "neck"]
                nxt = order[(order.index(self.proc.table_user) + 1) % len(order)]
                self.pending = f"table:{nxt or 'auto'}"
            elif key in (k["collimate_in"], k["collimate_out"]):
                c = self.proc.planes[self.carm_plane].collimation + (-0.1 if key == k["collimate_in"] else 0.1)
                self.pending = f"collimate:{self.carm_plane}:{min(1.0, max(0.2, round(c, 2))):g}"
            elif key == k["review"]:
                if any(self.dsa_run.values()):
                    self.review, self.review_t0 = not self.review, self.app_time
                else:
                    self.message = tr("review_none", self.lang)
                    self.message_until = self.proc.time_s + 3.0
            elif key == k["overview"]:
                if self.exam:
                    self.message = tr("overview_exam", self.lang)
                    self.message_until = self.proc.time_s + 3.0
                else:
                    self.show_overview = not self.show_overview
            elif key == k["end"]:
                self.pending = "end"
        elif self.state == "replay":
            if key == "SPACE":
                self.replay_playing = not self.replay_playing
            elif key in ("RIGHT", "LEFT"):
                self._replay_seek(self.proc.time_s + (10.0 if key == "RIGHT" else -10.0))
            elif key == "UP":
                self.replay_speed = min(16, self.replay_speed * 4)
            elif key == "DOWN":
                self.replay_speed = max(1, self.replay_speed // 4)
            elif key == "ESCAPE":
                return False
        elif self.state == "debrief":
            if key in ("RETURN", "ENTER", "ESCAPE"):
                self.state = "menu"
                self.unlocked = self._unlocked_levels()
        return True

    # ------------------------------------------------------------------ trainee
    def _trainee_store(self) -> Any:
        """The records database, opened on first use; None (with the error shown) when it cannot be."""
        if self.store is None:
            from iratrainer.records.store import Store

            try:
                self.store = Store(self._db)
            except IratrainerError as exc:
                self.trainee_error = str(exc)
                return None
        return self.store

    def _trainee_rows(self) -> list[str]:
        store = self._trainee_store()
        return [r["name"] for r in store.trainees()] if store is not None else []

    def _press_trainee(self, key: str) -> bool:
        names = self._trainee_rows()
        n = len(names) + 2  # the trainees, a new one, without recording
        if key == "UP":
            self.trainee_sel = (self.trainee_sel - 1) % n
        elif key == "DOWN":
            self.trainee_sel = (self.trainee_sel + 1) % n
        elif key in ("RETURN", "ENTER"):
            k = self.trainee_sel
            if k < len(names):
                self._choose_trainee(names[k])
            elif k == len(names):
                if self._trainee_store() is not None:
                    self.state, self.new_name, self.trainee_error = "new_trainee", "", ""
            else:
                self.trainee, self.state = None, "menu"
                self.unlocked = self._unlocked_levels()
        elif key == "ESCAPE":
            return False
        return True

    def _choose_trainee(self, name: str) -> None:
        self.trainee = name
        self.unlocked = self._unlocked_levels()
        self.state, self.trainee_error = "menu", ""

    def _create_trainee(self) -> None:
        name = " ".join(self.new_name.split())
        try:
            self.store.add_trainee(name)
        except IratrainerError as exc:  # empty, already there, disk full: said on screen, nothing lost
            self.trainee_error = str(exc)
            return
        self._choose_trainee(name)

    def _draw_trainee(self) -> None:
        y = self._text(tr("title", self.lang), 40, 30, self.big)
        y = self._text(tr("who_trains", self.lang), 40, y + 10, self.font, (140, 190, 255))
        names = self._trainee_rows()
        items = names + [tr("new_trainee", self.lang), tr("no_recording", self.lang)]
        for k, item in enumerate(items[:28]):
            col = (255, 230, 120) if k == self.trainee_sel else (220, 220, 220)
            y = self._text(f"{'>' if k == self.trainee_sel else ' '} {item}", 60, y + 2, self.font, col)
        if self.store is not None:
            self._text(tr("records_at", self.lang, path=self.store.path), 40, H - 110, self.small, (150, 150, 150))
        if self.trainee_error:
            self._wrap(self.trainee_error, 40, H - 140, W - 80, self.small)
        self._notice()
        self._text(tr("trainee_help", self.lang), 40, H - 40, self.small, (160, 160, 160))

    def _draw_new_trainee(self) -> None:
        y = self._text(tr("new_trainee", self.lang), 40, 30, self.big)
        y = self._text(tr("type_name", self.lang), 40, y + 10)
        self.pg.draw.rect(self.screen, (40, 44, 56), (40, y + 10, 600, 40))
        self._text(self.new_name + "_", 50, y + 18, self.font, (255, 255, 255))
        if self.trainee_error:
            self._wrap(self.trainee_error, 40, y + 70, W - 80, self.small)
        self._text(tr("new_trainee_help", self.lang), 40, H - 40, self.small, (160, 160, 160))

    # ------------------------------------------------------------------ replay
    def open_replay(self, session: str) -> None:
        """Prepare the replay of a recorded session (id or its first characters)."""
        from iratrainer.scenario.procedure import Controls, Procedure

        if self.store is None:
            from iratrainer.records.store import Store

            self.store = Store(self._db)
        rows = [r for r in self.store.sessions() if r["id"].startswith(session)]
        if len(rows) != 1:
            raise AppError(f"session '{session}': {'no such session' if not rows else 'ambiguous, give more characters'}")
        row = rows[0]
        case = next((c for c in self.cases if c.id == row["case_id"]), None)
        if case is None or case.content_hash != row["case_hash"]:
            raise AppError(f"session {row['id'][:8]}: its case '{row['case_id']}' is not in the library in the same "
                           "version; the replay would differ")
        self.case = case
        self.replay_log = [(int(r["step"]), Controls(**json.loads(r["controls"])))
                           for r in self.store.db["controls"].rows_where("session_id = ?", [row["id"]], order_by="seq")]
        self.replay_events = self.store.events_of(row["id"])
        self.replay_end = max([e["t_s"] for e in self.replay_events] + [0.0])
        self.replay_seed = int(row["seed"])
        self._procedure_cls = Procedure
        self._replay_restart()
        self.state = "replay"

    def resume(self, session: str) -> None:
        """Continue a session a crash interrupted: replay its recorded controls, then play on live,
        recording into the same session."""
        from iratrainer.records.recorder import SessionRecorder

        self.open_replay(session)
        row = next(r for r in self.store.sessions() if r["id"].startswith(session))
        self.replay_playing = False
        reached = float(row.get("sim_time_s") or 0.0)  # where the last committed batch had got to
        while self.proc.time_s < reached - 1e-9 and not self.proc.terminated:
            self._replay_step(render=False)
        if self.proc.terminated:
            raise AppError(f"session {row['id'][:8]} had already ended; replay it instead")
        self.trainee = row["trainee"]
        self.sid = row["id"]
        self.control_log = list(self.replay_log)
        self._prev_controls = replace(self.replay_cur, action="")
        self.pending = ""
        with self.store.db.conn:
            self.store.db["sessions"].update(self.sid, {"status": "running"})
        self.rec = SessionRecorder(self.store, self.sid)
        self.rec._events_sent = self.store.db["events"].count_where("session_id = ?", [self.sid])
        self.rec._controls_sent = len(self.control_log)
        self.rec._last_flush_t = self.proc.time_s
        self.state = "procedure"

    def _replay_restart(self) -> None:
        from iratrainer.imaging.chain import PlaneChain
        from iratrainer.imaging.dose import DoseMeter
        from iratrainer.scenario.procedure import Controls

        self.proc = self._procedure_cls(self.case, self.replay_seed)
        rng = np.random.default_rng([99, self.replay_seed])
        self.chains = {n: PlaneChain(replace(p, matrix=256), DoseMeter(), rng) for n, p in self.proc.planes.items()}
        self.images = {}
        self.replay_idx = 0
        self.replay_cur = Controls()
        self.replay_playing = True
        self.replay_speed = getattr(self, "replay_speed", 1)
        self.hand, self.table, self.biplane = "", 0, True
        self._input_step = None
        self._was_moving = False
        self.dsa_run = {}
        self.review = False
        self.carm_plane = "frontal"
        self._carm_goal = None
        self._carm_goal_plane = "frontal"
        self._carm_sent = -999

    def _replay_step(self, render: bool) -> None:
        from dataclasses import replace as dc_replace

        log = self.replay_log
        while self.replay_idx < len(log) and log[self.replay_idx][0] == self.proc.step_index:
            self.replay_cur = log[self.replay_idx][1]
            self.replay_idx += 1
        self.proc.step(self.replay_cur)
        if self.replay_cur.action:
            self.replay_cur = dc_replace(self.replay_cur, action="")
        self.hand = self.replay_cur.device
        if render and self.proc.exposures_this_step:
            self._images()

    def _replay_seek(self, t_s: float) -> None:
        t_s = max(0.0, min(t_s, self.replay_end))
        if t_s < self.proc.time_s:
            self._replay_restart()
        while self.proc.time_s < t_s - 1e-9 and not self.proc.terminated:
            self._replay_step(render=self.proc.time_s > t_s - 1.0)  # the last second renders (the images)

    # ------------------------------------------------------------------ procedure
    def _start(self) -> None:
        from iratrainer import __version__
        from iratrainer.imaging.chain import PlaneChain
        from iratrainer.imaging.dose import DoseMeter
        from iratrainer.scenario.procedure import Procedure

        self.proc = Procedure(self.case, self.seed)
        self.control_log: list[tuple[int, Any]] = []
        self._prev_controls: Any = None
        self.hand = ""
        self.table = 0
        self.pending = ""
        self.biplane = True
        self.images: dict[str, Any] = {}
        rng = np.random.default_rng([99, self.seed])
        self.chains = {n: PlaneChain(replace(p, matrix=256), DoseMeter(), rng) for n, p in self.proc.planes.items()}
        self.rec = None
        self.sid = None
        if self.store is not None:
            from iratrainer.records.recorder import SessionRecorder

            self.sid = self.store.start_session(self.store.trainee_id(self.trainee), self.case, self.seed, __version__,
                                                mode="exam" if self.exam else "practice")
            self.rec = SessionRecorder(self.store, self.sid)
        self._input_step: int | None = None
        self._was_moving = False
        self.dsa_run: dict[str, list[Any]] = {}
        self.review = False
        self.carm_plane = "frontal"
        self._carm_goal: tuple[float, float] | None = None
        self._carm_goal_plane = "frontal"
        self._carm_sent = -999
        self.state = "procedure"

    def _step(self, held: set[str]) -> None:
        from iratrainer.scenario.procedure import Controls

        k = self.settings.keys
        slow = "LEFT SHIFT" in held or "RIGHT SHIFT" in held
        speed = 10.0 if slow else 40.0
        adv = (speed if k["advance"] in held else 0.0) - (speed if k["retract"] in held else 0.0)
        rot = (180.0 if k["rotate_right"] in held else 0.0) - (180.0 if k["rotate_left"] in held else 0.0)
        # mouse input accumulated since the last step, delivered within the hub's speed limits
        dt = self.proc.dt
        m_adv = float(np.clip(self.mouse_advance_mm / dt, -60.0, 60.0))
        m_rot = float(np.clip(self.mouse_rotate_deg / dt, -720.0, 720.0))
        self.mouse_advance_mm -= m_adv * dt
        self.mouse_rotate_deg -= m_rot * dt
        adv += m_adv + self.gamepad.advance_mm_s
        rot += m_rot + self.gamepad.rotate_deg_s
        if k["carm"] in held or self.gamepad.carm_mode:  # the hands are on the C-arm, not the device
            self._carm_drive(held)
            adv = rot = 0.0
        elif self._carm_goal is not None and not self.pending:  # released: the last angle is sent
            self._carm_send()
        c = Controls(self.hand, adv, rot, k["fluoro"] in held or self.gamepad.fluoro, self.biplane, self.pending)
        if c.fluoro:
            self.review = False  # the pedal brings the live image back
        moving = bool(adv or rot or self.pending)
        # an input starts under the pedal: time it to the first image that can show it
        if moving and not self._was_moving and self._input_step is None and c.fluoro:
            self._input_step = self.proc.step_index
        self._was_moving = moving
        self.pending = ""
        base = replace(c, action="")
        if c.action or base != self._prev_controls:
            self.control_log.append((self.proc.step_index, c))
            self._prev_controls = base
        n_events = len(self.proc.events)
        self.proc.step(c)
        for e in self.proc.events[n_events:]:
            if e.kind == "refused":
                self.message = tr("message_refused", self.lang, reason=e.data.get("reason", ""))
                self.message_until = self.proc.time_s + 4.0
        if self.proc.exposures_this_step:
            self._images()
        if self.rec is not None:
            self.rec.maybe_push(self.proc, self.control_log)

    def _carm_send(self) -> None:
        lao, cran = self._carm_goal
        self.pending = f"carm:{self._carm_goal_plane}:{lao:.1f}:{cran:.1f}"
        self._carm_sent = self.proc.step_index
        self._carm_goal = None

    def _carm_drive(self, held: set[str]) -> None:
        """Rotate the C-arm plane in use at up to CARM_DEG_S: left/right LAO/RAO, up/down
        cranial/caudal (keys with the C-arm key held, or the left stick with the left trigger).
        The angle is sent to the procedure five times a second while it changes."""
        k = self.settings.keys
        gx, gy = self.gamepad.carm_axes
        d_lao = ((k["rotate_right"] in held) - (k["rotate_left"] in held) + gx) * CARM_DEG_S * self.proc.dt
        d_cran = ((k["advance"] in held) - (k["retract"] in held) - gy) * CARM_DEG_S * self.proc.dt
        p = self.proc.planes[self.carm_plane]
        if self._carm_goal is not None and self._carm_goal_plane != self.carm_plane:
            self._carm_goal = None  # the other plane was picked: start from where this one is
        lao, cran = self._carm_goal or (p.lao_deg, p.cran_deg)
        if not (d_lao or d_cran) and self._carm_goal is None:
            return
        self._carm_goal, self._carm_goal_plane = (lao + d_lao, cran + d_cran), self.carm_plane
        if self.proc.step_index - self._carm_sent >= 6 and not self.pending:
            self._carm_send()

    def _images(self) -> None:
        scene = self.proc.snapshot()
        for name, kind in self.proc.exposures_this_step:
            ch = self.chains[name]
            ch.set_plane(replace(self.proc.planes[name], matrix=256))
            if kind == "fluoro":
                fr = ch.fluoro_pulse(scene)
            else:
                fr = ch.dsa_frame(scene, mask=kind.endswith("_mask"))
                if kind.startswith("roadmap") and not kind.endswith("_mask"):
                    ch.store_roadmap()
                if kind == "dsa_mask":  # a new run: its frames are kept for review
                    self.dsa_run[name] = []
                    self.review = False
                elif kind == "dsa":
                    self.dsa_run.setdefault(name, []).append(fr.display)
            self.images[name] = fr.display
        if self._input_step is not None:  # input-to-image latency, in display frames
            steps = self.proc.step_index - self._input_step
            self.latency_frames.append(int(np.ceil(steps * self.proc.dt * FPS)))
            self._input_step = None

    def _finish(self, status: str = "completed") -> None:
        from iratrainer.scoring.rubric import score_session

        m = self.proc.metrics()
        if status == "aborted":
            m["outcome"] = "aborted"
        self.score = score_session(m, self.proc.event_log(), self.case.level, self.case.goal.kind, self.case.scoring)
        self.outcome = m["outcome"]
        if self.rec is not None and self.store is not None:
            self.rec.maybe_push(self.proc, self.control_log, force=True)
            self.rec.finish()
            self.store.finish_session(self.sid, m, self.score.as_dict(), status)
            self.rec = None
        self.state = "debrief"

    def _abort(self) -> None:
        self.proc.log(self.proc.time_s, "aborted")
        self._finish("aborted")
        self.paused = False

    # ------------------------------------------------------------------ drawing
    def _text(self, s: str, x: int, y: int, font: Any = None, color: tuple[int, int, int] = (230, 230, 230)) -> int:
        f = font or self.font
        key = (s, id(f), color)
        surf = self._text_cache.get(key)
        if surf is None:  # most HUD strings change at most once a second: render each once
            if len(self._text_cache) > 512:
                self._text_cache.clear()
            surf = self._text_cache[key] = f.render(s, True, color)
        self.screen.blit(surf, (x, y))
        return y + f.get_linesize()

    def _wrap(self, s: str, x: int, y: int, width: int, font: Any = None) -> int:
        f = font or self.font
        line = ""
        for word in s.split():
            trial = f"{line} {word}".strip()
            if f.size(trial)[0] > width and line:
                y = self._text(line, x, y, f)
                line = word
            else:
                line = trial
        return self._text(line, x, y, f) if line else y

    def _draw(self) -> None:
        self._gl_images = []
        self.screen.fill((18, 20, 24, 255))
        getattr(self, f"_draw_{self.state}")()

    def _draw_menu(self) -> None:
        y = self._text(tr("title", self.lang), 40, 30, self.big)
        y = self._text((tr("trainee", self.lang, name=self.trainee) if self.trainee else tr("no_trainee", self.lang))
                       + "  " + tr("change_trainee", self.lang), 40, y + 5)
        y += 10
        level = ""
        for k, c in enumerate(self.cases):
            if c.level != level:
                level = c.level
                y = self._text(tr(f"level_{level}", self.lang), 40, y + 6, self.font, (140, 190, 255))
            locked = c.level not in self.unlocked
            mark = ">" if k == self.sel else " "
            col = (255, 230, 120) if k == self.sel else ((120, 120, 120) if locked else (220, 220, 220))
            suffix = f"  ({tr('locked', self.lang)})" if locked else ""
            y = self._text(f"{mark} {c.title[self.lang]}{suffix}", 60, y, self.small, col)
        for err in self.case_errors[:3] + ([self.message] if self.message and self.state == "menu" else []):
            y = self._wrap(err, 40, y + 6, W - 80, self.small)
        self._notice()
        self._text(tr("menu_help", self.lang), 40, H - 40, self.small, (160, 160, 160))

    def _notice(self) -> None:
        """The display notice (software path, no GPU) and settings warnings, above the footer."""
        lines = [w for w in self.warnings if w]
        for k, w in enumerate(lines[-2:]):
            self._text(w, 40, H - 84 + 20 * k, self.small, (255, 190, 110))

    def _draw_briefing(self) -> None:
        c = self.case
        v = c.vignette
        y = self._text(f"{tr('briefing', self.lang)} — {c.title[self.lang]}", 40, 30, self.big)
        y = self._text(tr("patient", self.lang, sex=v.sex, age=v.age, nihss=v.nihss, onset=v.onset_min), 40, y + 10)
        y = self._wrap(v.text[self.lang], 40, y + 10, W - 80)
        y = self._wrap(v.imaging[self.lang], 40, y + 6, W - 80)
        y = self._text(tr("objectives", self.lang), 40, y + 16, self.font, (140, 190, 255))
        for o in c.objectives[self.lang]:
            y = self._wrap(f"• {o}", 60, y, W - 120, self.small)
        self._notice()
        self._text(tr("start_hint", self.lang), 40, H - 40, self.small, (160, 160, 160))

    def _review_frame(self, name: str) -> tuple[Any, str]:
        """In DSA review, the frame of the last run to show now (looped at 6 frames/s of app
        time) and its label; else the live (or last-held) image."""
        frames = self.dsa_run.get(name) or []
        if not (self.review and frames):
            return self.images.get(name), ""
        k = int((self.app_time - self.review_t0) * 6.0) % len(frames)
        return frames[k], tr("review_label", self.lang, k=k + 1, n=len(frames))

    def _blit_image(self, name: str, x: int, y: int) -> None:
        pg = self.pg
        img, review = self._review_frame(name) if self.state == "procedure" else (self.images.get(name), "")
        if img is None:
            pg.draw.rect(self.screen, (0, 0, 0), (x, y, IMG, IMG))
        elif self.gl is not None:  # a hole in the interface; OpenGL draws the image under it
            self.screen.fill((0, 0, 0, 0), (x, y, IMG, IMG))
            self._gl_images.append((name, img, (x, y, IMG, IMG)))
        else:
            a = (np.clip(np.asarray(img), 0, 1) * 255).astype(np.uint8)
            rgb = np.repeat(a.T[:, :, None], 3, axis=2)
            surf = pg.surfarray.make_surface(rgb)
            self.screen.blit(pg.transform.scale(surf, (IMG, IMG)), (x, y))
        self._text(tr(name, self.lang) + (f" — {review}" if review else ""), x + 6, y + 6, self.small,
                   (255, 220, 120))

    def _draw_procedure(self) -> None:
        p = self.proc
        self._blit_image("frontal", 40, 20)
        self._blit_image("lateral", 40 + IMG + 40, 20)
        x, y = 40, IMG + 32
        y = self._text("   ".join([tr("hud_time", self.lang, t=_fmt_t(p.time_s)),
                                   tr("hud_fluoro", self.lang, t=_fmt_t(p.dose.fluoro_time_s)),
                                   tr("hud_dose", self.lang, dap=p.dose.dap_gy_cm2, kar=p.dose.kar_mgy),
                                   tr("hud_contrast", self.lang, ml=p.contrast_ml),
                                   tr("hud_passes", self.lang, n=len(p.passes), tici=p.tici_shown or "-")]), x, y)
        pl = p.planes
        y = self._text(tr("hud_carm", self.lang, flao=pl["frontal"].lao_deg, fcran=pl["frontal"].cran_deg,
                          llao=pl["lateral"].lao_deg, lcran=pl["lateral"].cran_deg) + "   " +
                       tr("hud_field", self.lang, plane=tr(self.carm_plane, self.lang),
                          fov=pl[self.carm_plane].fov_cm, coll=100 * pl[self.carm_plane].collimation,
                          auto="" if self.carm_plane in p.fov_user else " auto",
                          view=tr(f"view_{p.table_user or 'auto'}", self.lang)), x, y, self.small)
        y = self._text(tr("hud_pulse", self.lang, pps=p.pulse_pps) + "   " +
                       tr("hud_table", self.lang, name=self.case.devices[self.table]), x, y, self.small)
        for k, d in enumerate(p.stack.devices):
            mark = f"[{k + 1}]" + ("*" if d.name == self.hand else " ")
            line = tr("hud_device", self.lang, mark=mark, name=d.name, mm=d.inserted_mm, deg=d.phi_deg)
            if d.inserted_mm > 0:
                line += "  " + tr("hud_tip", self.lang, where=p.stack.label_at(d.inserted_mm))
            if k > 0:  # how far it comes out of the device it runs in
                outer = p.stack.devices[k - 1]
                line += "  " + tr("hud_beyond", self.lang, mm=d.inserted_mm - outer.inserted_mm, name=outer.name)
            y = self._text(line, x + 20, y, self.small)
        flags = []
        if p.balloon:
            flags.append(tr("hud_balloon", self.lang))
        if p.aspiration:
            flags.append(tr("hud_aspiration", self.lang))
        if any(d.push_n > 2.0 for d in p.stack.devices):
            flags.append(tr("warn_force", self.lang))
        if p.dose.dap_gy_cm2 > 0.8 * self.case.dose_limit_gy_cm2:
            flags.append(tr("warn_dose", self.lang))
        yw = IMG + 60
        for f in flags:
            yw = self._text(f, 660, yw, self.small, (255, 120, 100))
        if self.message and p.time_s < self.message_until:
            self._wrap(self.message, 660, yw + 6, W - OVERVIEW - 60 - 660, self.small)
        if self.show_overview and not self.exam:
            self._draw_overview(W - 40 - OVERVIEW, IMG + 32)
        if self.exam:
            self._text(tr("exam_mode", self.lang), W - 200, IMG + 32, self.font, (255, 200, 120))
        if self.help:
            self.pg.draw.rect(self.screen, (30, 30, 40), (100, 100, W - 200, 440))
            yy = self._text(tr("help_title", self.lang), 120, 120, self.font, (140, 190, 255))
            yy = self._wrap(tr("help_lines", self.lang), 120, yy + 10, W - 260, self.small)
            yy = self._wrap(tr("help_carm", self.lang), 120, yy + 10, W - 260, self.small)
            yy = self._wrap(tr("help_mouse", self.lang), 120, yy + 10, W - 260, self.small)
            yy = self._wrap(tr("help_gamepad", self.lang), 120, yy + 10, W - 260, self.small)
            self._wrap(tr("help_settings", self.lang, path=self._settings_path), 120, yy + 10, W - 260, self.small)
        if self.paused:
            self._text(tr("paused", self.lang), 420, 380, self.big, (255, 230, 120))

    def _draw_overview(self, x0: int, y0: int) -> None:
        from iratrainer.app.overview import Overview

        if getattr(self, "_overview_tree", None) is not self.proc.tree:
            self.overview = Overview(self.proc.tree, OVERVIEW)
            self._overview_tree = self.proc.tree
            self._overview_surface, self._overview_t = None, 0.0
        # redrawn ten times a second of simulation (it turns at 12 deg/s), else the last drawing
        t = self.proc.time_s
        if self._overview_surface is None or t < self._overview_t or t - self._overview_t >= 0.1 - 1e-9:
            st = self.proc.stack
            devices = [(d.spec.kind, st.shape(d.name)) for d in st.devices if d.inserted_mm > 0]
            tree = self.proc.tree
            clots = [tree.point_at(c.spec.branch, c.start_mm + 0.5 * c.length_mm) for c in self.proc.circ.clots
                     if c.present]
            focus = (max(devices, key=lambda d: d[1][-1][2])[1][-1] if devices else (clots[0] if clots else None))
            surf = self._overview_surface or self.pg.Surface((OVERVIEW, OVERVIEW), self.screen.get_flags())
            self.overview.draw(self.pg, surf, 0, 0, t, devices, clots, tr("overview_title", self.lang), focus)
            self._overview_surface, self._overview_t = surf, t
        self.screen.blit(self._overview_surface, (x0, y0))

    def _timeline_click(self, pos: tuple[int, int]) -> None:
        """A click (or drag) on the replay timeline seeks to that time."""
        x0, x1, y = TIMELINE
        if x0 <= pos[0] <= x1 and y - 14 <= pos[1] <= y + 22:
            self._replay_seek((pos[0] - x0) / (x1 - x0) * self.replay_end)

    def _draw_replay(self) -> None:
        self._draw_procedure()
        pg = self.pg
        x0, x1, y = TIMELINE
        pg.draw.rect(self.screen, (60, 60, 70), (x0, y, x1 - x0, 8))
        end = max(self.replay_end, 1e-6)
        for e in self.replay_events:
            if e["kind"] in ("pass", "dsa", "complication", "deploy", "roadmap"):
                col = {"pass": (120, 220, 120), "complication": (255, 90, 90)}.get(e["kind"], (150, 170, 255))
                xe = x0 + (x1 - x0) * min(e["t_s"] / end, 1.0)
                pg.draw.line(self.screen, col, (xe, y - 6), (xe, y + 14), 2)
        xc = x0 + (x1 - x0) * min(self.proc.time_s / end, 1.0)
        pg.draw.rect(self.screen, (255, 230, 120), (xc - 3, y - 8, 6, 24))
        self._text(tr("replay_hint", self.lang, speed=self.replay_speed, t=_fmt_t(self.proc.time_s),
                      end=_fmt_t(self.replay_end)), x0, y + 18, self.small, (200, 200, 200))

    def _draw_debrief(self) -> None:
        s = self.score
        y = self._text(f"{tr('debrief', self.lang)} — {self.case.title[self.lang]}", 40, 30, self.big)
        y = self._text(tr(f"outcome_{self.outcome}", self.lang), 40, y + 10, self.font, (140, 190, 255))
        y = self._text(tr("score", self.lang, score=s.total, verdict=tr("passed" if s.passed else "not_yet",
                                                                           self.lang)), 40, y + 6, self.big)
        for k, v in s.components.items():
            y = self._text(f"{tr('comp_' + k, self.lang):12s} {100 * v:5.0f} %  (× {s.weights[k]:.0f})", 60, y,
                           self.small)
        y = self._text(tr("improve", self.lang), 40, y + 12, self.font, (255, 200, 120))
        for item in s.debrief[self.lang]:
            y = self._wrap(f"• [{_fmt_t(item['t_s'])}] {item['text']}", 60, y, W - 120, self.small)
        self._text(tr("debrief_hint", self.lang), 40, H - 40, self.small, (160, 160, 160))
