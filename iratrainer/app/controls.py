"""Controls and settings: keyboard keys, the gamepad mapping, display and language choices.

``settings.toml`` in the user config folder (``IRATRAINER_HOME`` overrides) holds what a
trainee changes; everything has a default, a missing file is the defaults, a corrupt file
is the defaults and a warning that names the file::

    language = "fr"            # "fr" or "en"
    display = "auto"           # "auto" (OpenGL, else software), "opengl", "software"
    overview = true            # the small 3-D overview (always off in exam mode)

    [keys]                     # action = key name as pygame spells it (upper case)
    advance = "UP"
    fluoro = "SPACE"

    [gamepad]                  # SDL joystick numbering (an Xbox-layout pad by default)
    advance_axis = 1           # left stick, vertical: pushed away = advance
    rotate_axis = 3            # right stick, horizontal: torque
    fluoro_axis = 5            # right trigger: the fluoroscopy pedal
    carm_axis = 2              # left trigger held: the left stick turns the C-arm
    deadzone = 0.15
    [gamepad.buttons]          # button number = action
    0 = "dsa"

Two hands on a gamepad: the left thumb pushes and pulls the device, the right thumb
turns it, the right index finger holds the pedal; the face buttons start runs and insert
or remove devices; the shoulders change the device in hand; the cross pad walks the
device table (left/right) and the pulse rate (up/down).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iratrainer.app.i18n import default_language, tr

__all__ = ["DEFAULT_KEYS", "DEFAULT_GAMEPAD", "GamepadMap", "Gamepad", "Settings", "load_settings",
           "GAMEPAD_ACTIONS"]

DEFAULT_KEYS: dict[str, str] = {
    "advance": "UP", "retract": "DOWN", "rotate_left": "LEFT", "rotate_right": "RIGHT", "fluoro": "SPACE",
    "dsa": "D", "roadmap": "R", "insert": "I", "next_table": "N", "prev_table": "P", "remove": "X",
    "balloon": "B", "aspiration": "A", "biplane": "V", "help": "H", "pause": "ESCAPE", "end": "E",
    "language": "L", "abort": "Q", "pulse_rate": "F", "overview": "O", "review": "W",
    "carm": "C", "carm_plane": "K", "zoom": "Z", "collimate_in": "[", "collimate_out": "]", "inject": "J",
    "table": "T",
}

# actions a gamepad button can carry: the keyboard's one-shot actions plus the device in hand
GAMEPAD_ACTIONS = frozenset({"dsa", "roadmap", "insert", "remove", "next_table", "prev_table", "balloon",
                             "aspiration", "biplane", "help", "pause", "end", "pulse_rate", "overview", "review",
                             "carm_plane", "zoom", "collimate_in", "collimate_out", "inject", "table",
                             "next_device", "prev_device", "abort"})

DEFAULT_GAMEPAD: dict[str, Any] = {
    "advance_axis": 1, "rotate_axis": 3, "fluoro_axis": 5, "carm_axis": 2, "carm_x_axis": 0, "deadzone": 0.15,
    "advance_mm_s": 40.0, "rotate_deg_s": 180.0,
    "buttons": {0: "dsa", 1: "roadmap", 2: "insert", 3: "remove", 4: "prev_device", 5: "next_device",
                6: "help", 7: "pause", 8: "review", 9: "biplane", 10: "balloon"},
}


@dataclass
class GamepadMap:
    """Which stick, trigger and button does what (SDL joystick numbering).

    Attributes:
        advance_axis: axis pushing (-1, stick away) and pulling (+1) the device in hand.
        rotate_axis: axis turning it (+1 clockwise seen from the operator).
        fluoro_axis: trigger axis (rest -1, pulled +1) holding the pedal when past half-way.
        carm_axis: trigger axis that hands the left stick to the C-arm while held.
        carm_x_axis: left stick, horizontal (LAO/RAO in C-arm mode; its vertical is cranial/caudal).
        deadzone: stick values below this magnitude count as zero.
        advance_mm_s: hub speed at full stick, mm/s.
        rotate_deg_s: torque rate at full stick, deg/s.
        buttons: button number -> action name.
    """

    advance_axis: int = 1
    rotate_axis: int = 3
    fluoro_axis: int = 5
    carm_axis: int = 2
    carm_x_axis: int = 0
    deadzone: float = 0.15
    advance_mm_s: float = 40.0
    rotate_deg_s: float = 180.0
    buttons: dict[int, str] = field(default_factory=lambda: dict(DEFAULT_GAMEPAD["buttons"]))


class Gamepad:
    """The state of the pad(s), fed with pygame joystick events."""

    def __init__(self, mapping: GamepadMap) -> None:
        self.map = mapping
        self.axes: dict[int, float] = {}
        self.pads: dict[int, Any] = {}

    def _dz(self, v: float) -> float:
        d = self.map.deadzone
        if abs(v) < d:
            return 0.0
        return (abs(v) - d) / (1.0 - d) * (1.0 if v > 0 else -1.0)  # continuous at the dead zone's edge

    def axis(self, index: int, value: float) -> None:
        """An axis moved (value in [-1, 1])."""
        self.axes[index] = max(-1.0, min(1.0, float(value)))

    def release(self) -> None:
        """Sticks centred, trigger released (a pad unplugged, the procedure left)."""
        self.axes.clear()

    @property
    def advance_mm_s(self) -> float:
        """Hub push speed the left stick asks for, mm/s (stick away from the body = advance)."""
        return -self._dz(self.axes.get(self.map.advance_axis, 0.0)) * self.map.advance_mm_s

    @property
    def rotate_deg_s(self) -> float:
        """Torque rate the right stick asks for, deg/s."""
        return self._dz(self.axes.get(self.map.rotate_axis, 0.0)) * self.map.rotate_deg_s

    @property
    def carm_mode(self) -> bool:
        """The left trigger is held: the left stick drives the C-arm instead of the device."""
        return self.axes.get(self.map.carm_axis, -1.0) > 0.0

    @property
    def carm_axes(self) -> tuple[float, float]:
        """Left stick (x, y) in C-arm mode, dead zone applied; (0, 0) otherwise."""
        if not self.carm_mode:
            return 0.0, 0.0
        return self._dz(self.axes.get(self.map.carm_x_axis, 0.0)), self._dz(self.axes.get(self.map.advance_axis, 0.0))

    @property
    def fluoro(self) -> bool:
        """The trigger pedal is held (past half-way)."""
        return self.axes.get(self.map.fluoro_axis, -1.0) > 0.0

    def button(self, index: int) -> str | None:
        """The action of a button, or None when it carries none."""
        return self.map.buttons.get(index)


@dataclass
class Settings:
    """User settings (see the module docstring)."""

    language: str
    keys: dict[str, str]
    display: str = "auto"
    overview: bool = True
    gamepad: GamepadMap = field(default_factory=GamepadMap)


def _gamepad(data: dict[str, Any]) -> GamepadMap:
    g = GamepadMap()
    for name in ("advance_axis", "rotate_axis", "fluoro_axis", "carm_axis", "carm_x_axis"):
        if name in data:
            if not isinstance(data[name], int) or not 0 <= data[name] < 32:
                raise ValueError(f"gamepad.{name}: an axis number 0-31")
            setattr(g, name, data[name])
    for name, lo, hi in (("deadzone", 0.0, 0.9), ("advance_mm_s", 1.0, 60.0), ("rotate_deg_s", 10.0, 720.0)):
        if name in data:
            v = data[name]
            if not isinstance(v, int | float) or not lo <= v <= hi:
                raise ValueError(f"gamepad.{name}: a number from {lo:g} to {hi:g}")
            setattr(g, name, float(v))
    if "buttons" in data:
        buttons = {}
        for k, action in dict(data["buttons"]).items():
            if not str(k).isdigit() or action not in GAMEPAD_ACTIONS:
                raise ValueError(f"gamepad.buttons.{k}: a button number and one of {', '.join(sorted(GAMEPAD_ACTIONS))}")
            buttons[int(k)] = action
        g.buttons = buttons
    unknown = set(data) - {"advance_axis", "rotate_axis", "fluoro_axis", "carm_axis", "carm_x_axis", "deadzone",
                           "advance_mm_s",
                           "rotate_deg_s", "buttons"}
    if unknown:
        raise ValueError(f"gamepad.{sorted(unknown)[0]}: unknown setting")
    return g


def load_settings(path: Path | None = None, warn: Any = None) -> Settings:
    """Read the settings; a missing file gives the defaults, a corrupt one the defaults and a warning."""
    lang = default_language()
    if path is None:
        from platformdirs import user_config_dir

        path = Path(os.environ.get("IRATRAINER_HOME") or user_config_dir("iratrainer")) / "settings.toml"
    if not path.exists():
        return Settings(lang, dict(DEFAULT_KEYS))
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        s = Settings(lang, dict(DEFAULT_KEYS))
        if data.get("language") in ("fr", "en"):
            s.language = data["language"]
        elif "language" in data:
            raise ValueError("language: 'fr' or 'en'")
        if "display" in data:
            if data["display"] not in ("auto", "opengl", "software"):
                raise ValueError("display: 'auto', 'opengl' or 'software'")
            s.display = data["display"]
        if "overview" in data:
            if not isinstance(data["overview"], bool):
                raise ValueError("overview: true or false")
            s.overview = data["overview"]
        for action, key in (data.get("keys") or {}).items():
            if action not in s.keys or not isinstance(key, str):
                raise ValueError(f"keys.{action}: unknown action or not a key name")
            s.keys[action] = key.upper()
        s.gamepad = _gamepad(dict(data.get("gamepad") or {}))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, TypeError) as exc:
        if warn:
            warn(tr("settings_warning", lang, path=path, why=exc))
        return Settings(lang, dict(DEFAULT_KEYS))
    return s
