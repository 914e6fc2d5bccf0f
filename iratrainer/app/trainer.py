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
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from iratrainer.app.i18n import default_language, tr
from iratrainer.errors import IratrainerError

__all__ = ["TrainerApp", "AppError", "load_settings", "DEFAULT_KEYS", "DEMO_SCRIPT"]

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
FPS = 30
MAX_CATCH_UP = 4

DEFAULT_KEYS: dict[str, str] = {
    "advance": "UP", "retract": "DOWN", "rotate_left": "LEFT", "rotate_right": "RIGHT", "fluoro": "SPACE",
    "dsa": "D", "roadmap": "R", "insert": "I", "next_table": "N", "prev_table": "P", "remove": "X",
    "balloon": "B", "aspiration": "A", "biplane": "V", "help": "H", "pause": "ESCAPE", "end": "E",
    "language": "L", "abort": "Q",
}


class AppError(IratrainerError):
    """The trainer cannot start (no display, a broken script)."""


@dataclass
class Settings:
    """User settings (``settings.toml`` in the user config folder)."""

    language: str
    keys: dict[str, str]


def load_settings(path: Path | None = None, warn: Any = None) -> Settings:
    """Read the settings; a missing file gives the defaults, a corrupt one the defaults and a warning."""
    lang = default_language()
    keys = dict(DEFAULT_KEYS)
    if path is None:
        from platformdirs import user_config_dir

        path = Path(os.environ.get("IRATRAINER_HOME") or user_config_dir("iratrainer")) / "settings.toml"
    if not path.exists():
        return Settings(lang, keys)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        if data.get("language") in ("fr", "en"):
            lang = data["language"]
        for action, key in (data.get("keys") or {}).items():
            if action not in keys or not isinstance(key, str):
                raise ValueError(f"keys.{action}: unknown action or not a key name")
            keys[action] = key.upper()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
        if warn:
            warn(tr("settings_warning", lang, path=path, why=exc))
        return Settings(lang, dict(DEFAULT_KEYS))
    return Settings(lang, keys)


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
    """

    def __init__(self, case_path: str | None = None, trainee: str | None = None, db: str | None = None,
                 headless: bool = False, script: str | list[dict[str, Any]] | None = None,
                 screenshot_dir: str | None = None,
                 settings_path: str | None = None, seed: int = 0) -> None:
        if headless:
            os.environ["SDL_VIDEODRIVER"] = "offscreen"
            os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
        elif not (sys.platform in ("win32", "darwin") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise AppError(tr("no_display", default_language()))
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        self.headless = headless
        self.warnings: list[str] = []
        self.settings = load_settings(Path(settings_path) if settings_path else None, self.warnings.append)
        self.lang = self.settings.language
        self.seed = seed
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
        self.state = "menu"
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

        if self.store is None:
            return {c.level for c in self.cases}
        ss = self.store.sessions(trainee_id=self.store.trainee_id(self.trainee))
        return {lv["level"] for lv in progress(ss, self.cases) if lv["unlocked"]}

    # ------------------------------------------------------------------ run
    def run(self, max_seconds: float | None = None) -> int:
        """The main loop; returns the exit code."""
        import pygame

        pygame.init()
        try:
            self.screen = pygame.display.set_mode((W, H))
        except pygame.error as exc:
            pygame.quit()
            raise AppError(f"{tr('no_display', self.lang)} ({exc})") from None
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
                    elif ev.type == pygame.KEYUP:
                        held.discard(pygame.key.name(ev.key).upper())
                    elif ev.type == pygame.MOUSEWHEEL and self.state == "procedure":
                        self.mouse_advance_mm += 5.0 * ev.y  # 5 mm per notch
                    elif ev.type == pygame.MOUSEMOTION and ev.buttons[0] and self.state == "procedure":
                        self.mouse_rotate_deg += 1.0 * ev.rel[0]  # 1 degree per pixel dragged
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
                pygame.display.flip()
                self.frame_times.append(time.perf_counter() - t0)
                t_app += dt_frame
                if max_seconds is not None and t_app >= max_seconds:
                    running = False
                if not self.headless:
                    clock.tick(FPS)
        finally:
            if self.state == "procedure" and self.proc is not None and not self.proc.terminated:
                self._abort()
            pygame.quit()
        return 0

    def _screenshot(self, name: str) -> None:
        if self.shots is not None:
            self.pg.image.save(self.screen, str(self.shots / f"{name}.png"))

    # ------------------------------------------------------------------ input
    def _key(self, action: str) -> str:
        return self.settings.keys[action]

    def _press(self, key: str) -> bool:
        """A key went down; False to quit."""
        k = self.settings.keys
        if key == k["language"] and self.state != "procedure":
            self.lang = "en" if self.lang == "fr" else "fr"
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
            elif key == k["roadmap"]:
                self.pending = "roadmap"
            elif key == k["balloon"]:
                self.pending = f"balloon:{'off' if self.proc.balloon else 'on'}"
            elif key == k["aspiration"]:
                self.pending = f"aspiration:{'off' if self.proc.aspiration else 'on'}"
            elif key == k["biplane"]:
                self.biplane = not self.biplane
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

            self.sid = self.store.start_session(self.store.trainee_id(self.trainee), self.case, self.seed, __version__)
            self.rec = SessionRecorder(self.store, self.sid)
        self._input_step: int | None = None
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
        adv += m_adv
        rot += m_rot
        c = Controls(self.hand, adv, rot, k["fluoro"] in held, self.biplane, self.pending)
        if (adv or rot or self.pending) and self._input_step is None:
            self._input_step = self.proc.step_index
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
        self.screen.blit(f.render(s, True, color), (x, y))
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
        self.screen.fill((18, 20, 24))
        getattr(self, f"_draw_{self.state}")()

    def _draw_menu(self) -> None:
        y = self._text(tr("title", self.lang), 40, 30, self.big)
        y = self._text(tr("trainee", self.lang, name=self.trainee) if self.trainee else tr("no_trainee", self.lang),
                       40, y + 5)
        y += 10
        level = ""
        for k, c in enumerate(self.cases):
            if c.level != level:
                level = c.level
                y = self._text(tr(f"level_{level}", self.lang), 40, y + 6, self.font, (140, 190, 255))
            locked = c.level not in self.unlocked
            mark = "▶" if k == self.sel else " "
            col = (255, 230, 120) if k == self.sel else ((120, 120, 120) if locked else (220, 220, 220))
            suffix = f"  ({tr('locked', self.lang)})" if locked else ""
            y = self._text(f"{mark} {c.title[self.lang]}{suffix}", 60, y, self.small, col)
        for err in self.case_errors[:3] + ([self.message] if self.message and self.state == "menu" else []):
            y = self._wrap(err, 40, y + 6, W - 80, self.small)
        self._text(tr("menu_help", self.lang), 40, H - 40, self.small, (160, 160, 160))

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
        self._text(tr("start_hint", self.lang), 40, H - 40, self.small, (160, 160, 160))

    def _blit_image(self, name: str, x: int, y: int) -> None:
        pg = self.pg
        img = self.images.get(name)
        if img is None:
            pg.draw.rect(self.screen, (0, 0, 0), (x, y, IMG, IMG))
        else:
            a = (np.clip(np.asarray(img), 0, 1) * 255).astype(np.uint8)
            rgb = np.repeat(a.T[:, :, None], 3, axis=2)
            surf = pg.surfarray.make_surface(rgb)
            self.screen.blit(pg.transform.scale(surf, (IMG, IMG)), (x, y))
        self._text(tr(name, self.lang), x + 6, y + 6, self.small, (255, 220, 120))

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
                          llao=pl["lateral"].lao_deg, lcran=pl["lateral"].cran_deg), x, y, self.small)
        y = self._text(tr("hud_table", self.lang, name=self.case.devices[self.table]), x, y, self.small)
        for k, d in enumerate(p.stack.devices):
            mark = f"[{k + 1}]" + ("*" if d.name == self.hand else " ")
            y = self._text(tr("hud_device", self.lang, mark=mark, name=d.name, mm=d.inserted_mm, deg=d.phi_deg),
                           x + 20, y, self.small)
        flags = []
        if p.balloon:
            flags.append(tr("hud_balloon", self.lang))
        if p.aspiration:
            flags.append(tr("hud_aspiration", self.lang))
        if any(d.push_n > 2.0 for d in p.stack.devices):
            flags.append(tr("warn_force", self.lang))
        if p.dose.dap_gy_cm2 > 0.8 * self.case.dose_limit_gy_cm2:
            flags.append(tr("warn_dose", self.lang))
        if flags:
            self._text("  ·  ".join(flags), 700, IMG + 60, self.font, (255, 120, 100))
        if self.message and p.time_s < self.message_until:
            self._text(self.message, 700, IMG + 90, self.small, (255, 180, 120))
        if self.help:
            self.pg.draw.rect(self.screen, (30, 30, 40), (100, 150, W - 200, 300))
            yy = self._text(tr("help_title", self.lang), 120, 170, self.font, (140, 190, 255))
            self._wrap(tr("help_lines", self.lang), 120, yy + 10, W - 260, self.small)
        if self.paused:
            self._text(tr("paused", self.lang), 420, 380, self.big, (255, 230, 120))

    def _draw_replay(self) -> None:
        self._draw_procedure()
        pg = self.pg
        x0, x1, y = 40, W - 40, H - 60
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
