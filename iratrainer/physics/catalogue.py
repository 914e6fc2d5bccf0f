"""The device catalogue: guidewires, microwires, catheters, stent retrievers, as data (TOML).

The shipped catalogue is ``iratrainer/data/devices.toml``; a case may bring its own file
in the same format. Loading validates every field; an error names the file, the device
and the field (``devices.toml: [devices.microwire_014].friction: expected a number from
0 to 1, got -1``).

Conventions: lengths in mm, stiffness in N·mm², angles in degrees in the file (radians
inside), ``sigma`` = distance from the tip along the device, mm.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from iratrainer.errors import IratrainerError

__all__ = ["CatalogueError", "Curve", "DeviceSpec", "load_catalogue", "default_catalogue", "KINDS"]

KINDS = ("guidewire", "microwire", "microcatheter", "catheter", "guide", "diagnostic", "stent_retriever")
MATERIALS = ("nitinol", "catheter", "platinum")


class CatalogueError(IratrainerError):
    """A device catalogue is invalid, or a device name is unknown; fix the file or the name."""


@dataclass(frozen=True)
class Curve:
    """A shaped bend of the tip: a circular arc ``length_mm`` long turning ``angle_deg``,
    starting ``start_mm`` from the tip."""

    start_mm: float
    length_mm: float
    angle_deg: float


@dataclass(frozen=True)
class DeviceSpec:
    """One catalogue entry (see ``iratrainer/data/devices.toml`` for the meaning of each field)."""

    name: str
    kind: str
    label_en: str
    label_fr: str
    outer_diameter_mm: float
    inner_diameter_mm: float
    length_mm: float
    bending_stiffness_n_mm2: float
    torsional_stiffness_n_mm2: float
    soft_length_mm: float
    soft_ratio: float
    transition_mm: float
    friction: float
    material: str
    curves: tuple[Curve, ...] = ()
    markers: tuple[tuple[float, float], ...] = ()
    radiopaque_tip_mm: float = 0.0
    shapeable: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def outer_radius_mm(self) -> float:
        """Outer radius, mm."""
        return self.outer_diameter_mm / 2.0

    @property
    def inner_radius_mm(self) -> float:
        """Lumen radius, mm (0 for wires)."""
        return self.inner_diameter_mm / 2.0

    @property
    def has_lumen(self) -> bool:
        """True for catheters (a device or contrast can go through)."""
        return self.inner_diameter_mm > 0.0

    @property
    def uniform_from_mm(self) -> float:
        """Distance from the tip (mm) beyond which the device is plain shaft: EI and GJ at their
        shaft values and no rest curvature (1 mm past the end of the soft tip's transition and
        of the last curve, so that :meth:`ei_scalar` gives exactly the shaft value there)."""
        ends = [c.start_mm + c.length_mm for c in self.curves]
        return max([self.soft_length_mm + max(self.transition_mm, 1e-9), *ends]) + 1.0

    def ei_at(self, sigma_mm: np.ndarray | float) -> np.ndarray:
        """Bending stiffness EI (N·mm²) at distance ``sigma_mm`` from the tip.

        ``soft_ratio · EI`` over the soft tip, rising linearly over ``transition_mm`` to the
        shaft value.
        """
        s = np.asarray(sigma_mm, dtype=np.float64)
        f = np.clip((s - self.soft_length_mm) / max(self.transition_mm, 1e-9), 0.0, 1.0)
        return self.bending_stiffness_n_mm2 * (self.soft_ratio + (1.0 - self.soft_ratio) * f)

    def gj_at(self, sigma_mm: np.ndarray | float) -> np.ndarray:
        """Torsional stiffness GJ (N·mm²) at ``sigma_mm`` from the tip (same profile as EI)."""
        return self.ei_at(sigma_mm) * (self.torsional_stiffness_n_mm2 / self.bending_stiffness_n_mm2)

    def ei_scalar(self, sigma_mm: float) -> float:
        """:meth:`ei_at` for one position, in plain floats (the per-step hot path)."""
        f = min(max((sigma_mm - self.soft_length_mm) / max(self.transition_mm, 1e-9), 0.0), 1.0)
        return self.bending_stiffness_n_mm2 * (self.soft_ratio + (1.0 - self.soft_ratio) * f)

    def rest_curvature_scalar(self, sigma_mm: float) -> float:
        """:meth:`rest_curvature` for one position, in plain floats."""
        k = 0.0
        for c in self.curves:
            if c.start_mm <= sigma_mm < c.start_mm + c.length_mm:
                k += math.radians(c.angle_deg) / c.length_mm
        return k

    def rest_curvature(self, sigma_mm: np.ndarray | float) -> np.ndarray:
        """Signed rest curvature (1/mm) in the shape plane at ``sigma_mm`` from the tip."""
        s = np.asarray(sigma_mm, dtype=np.float64)
        k = np.zeros_like(s)
        for c in self.curves:
            inside = (s >= c.start_mm) & (s < c.start_mm + c.length_mm)
            k = k + np.where(inside, math.radians(c.angle_deg) / c.length_mm, 0.0)
        return k

    def with_tip_shape(self, angle_deg: float, length_mm: float = 4.0, start_mm: float = 2.0) -> DeviceSpec:
        """A copy with a new single bend (for shapeable microwires: the operator's steam shaping)."""
        if not self.shapeable:
            raise CatalogueError(f"device '{self.name}' has no shapeable tip")
        from dataclasses import replace

        return replace(self, curves=(Curve(start_mm, length_mm, angle_deg),))


def _num(v: Any, where: str, lo: float, hi: float, unit: str = "") -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise CatalogueError(f"{where}: expected a number from {lo:g} to {hi:g}{unit}, got {v!r}")
    return float(v)


def _parse_device(name: str, d: Any, src: str) -> DeviceSpec:
    where = f"{src}: [devices.{name}]"
    if not isinstance(d, dict):
        raise CatalogueError(f"{where}: expected a table")
    required = ("kind", "label_en", "label_fr", "outer_diameter_mm", "length_mm", "bending_stiffness_n_mm2",
                "torsional_stiffness_n_mm2", "friction", "material")
    for key in required:
        if key not in d:
            raise CatalogueError(f"{where}.{key}: missing")
    kind = d["kind"]
    if kind not in KINDS:
        raise CatalogueError(f"{where}.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    material = d["material"]
    if material not in MATERIALS:
        raise CatalogueError(f"{where}.material: expected one of {', '.join(MATERIALS)}, got {material!r}")
    for key in ("label_en", "label_fr"):
        if not isinstance(d[key], str) or not d[key]:
            raise CatalogueError(f"{where}.{key}: expected a non-empty string")
    od = _num(d["outer_diameter_mm"], f"{where}.outer_diameter_mm", 0.1, 12.0, " mm")
    idm = _num(d.get("inner_diameter_mm", 0.0), f"{where}.inner_diameter_mm", 0.0, 11.0, " mm")
    if idm >= od:
        raise CatalogueError(f"{where}.inner_diameter_mm: {idm:g} mm is not smaller than the outer "
                             f"diameter {od:g} mm")
    curves = []
    raw_curves = d.get("curves", [])
    if not isinstance(raw_curves, list):
        raise CatalogueError(f"{where}.curves: expected a list of {{start_mm, length_mm, angle_deg}}")
    for i, c in enumerate(raw_curves):
        cw = f"{where}.curves[{i}]"
        if not isinstance(c, dict):
            raise CatalogueError(f"{cw}: expected {{start_mm, length_mm, angle_deg}}")
        curves.append(Curve(_num(c.get("start_mm"), f"{cw}.start_mm", 0.0, 500.0, " mm"),
                            _num(c.get("length_mm"), f"{cw}.length_mm", 0.5, 500.0, " mm"),
                            _num(c.get("angle_deg"), f"{cw}.angle_deg", -270.0, 270.0, " degrees")))
    markers = []
    for i, m in enumerate(d.get("markers", [])):
        mw = f"{where}.markers[{i}]"
        if not isinstance(m, dict):
            raise CatalogueError(f"{mw}: expected {{from_tip_mm, length_mm}}")
        markers.append((_num(m.get("from_tip_mm"), f"{mw}.from_tip_mm", 0.0, 2000.0, " mm"),
                        _num(m.get("length_mm"), f"{mw}.length_mm", 0.1, 50.0, " mm")))
    known = set(required) | {"inner_diameter_mm", "soft_length_mm", "soft_ratio", "transition_mm", "curves",
                             "markers", "radiopaque_tip_mm", "shapeable", "balloon", "stent"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise CatalogueError(f"{where}.{unknown[0]}: unknown field")
    shapeable = d.get("shapeable", False)
    if not isinstance(shapeable, bool):
        raise CatalogueError(f"{where}.shapeable: expected true or false")
    extra = {k: d[k] for k in ("balloon", "stent") if k in d}
    return DeviceSpec(
        name=name, kind=kind, label_en=d["label_en"], label_fr=d["label_fr"],
        outer_diameter_mm=od, inner_diameter_mm=idm,
        length_mm=_num(d["length_mm"], f"{where}.length_mm", 100.0, 3000.0, " mm"),
        bending_stiffness_n_mm2=_num(d["bending_stiffness_n_mm2"], f"{where}.bending_stiffness_n_mm2", 0.1, 1e5,
                                     " N·mm²"),
        torsional_stiffness_n_mm2=_num(d["torsional_stiffness_n_mm2"], f"{where}.torsional_stiffness_n_mm2", 0.05,
                                       1e5, " N·mm²"),
        soft_length_mm=_num(d.get("soft_length_mm", 0.0), f"{where}.soft_length_mm", 0.0, 500.0, " mm"),
        soft_ratio=_num(d.get("soft_ratio", 1.0), f"{where}.soft_ratio", 0.001, 1.0),
        transition_mm=_num(d.get("transition_mm", 0.0), f"{where}.transition_mm", 0.0, 500.0, " mm"),
        friction=_num(d["friction"], f"{where}.friction", 0.0, 1.0),
        material=material, curves=tuple(curves), markers=tuple(markers),
        radiopaque_tip_mm=_num(d.get("radiopaque_tip_mm", 0.0), f"{where}.radiopaque_tip_mm", 0.0, 100.0, " mm"),
        shapeable=shapeable, extra=extra,
    )


class Catalogue(dict[str, DeviceSpec]):
    """Devices by name; ``catalogue["name"]`` raises :class:`CatalogueError` with suggestions."""

    source: str = ""

    def __missing__(self, key: str) -> DeviceSpec:
        import difflib

        close = difflib.get_close_matches(str(key), list(self), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(self)}"
        raise CatalogueError(f"unknown device '{key}' in {self.source}{hint}")


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Load and validate a catalogue (the shipped one when ``path`` is None)."""
    if path is None:
        text = resources.files("iratrainer").joinpath("data/devices.toml").read_text(encoding="utf-8")
        src = "devices.toml (shipped)"
    else:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogueError(f"{p}: cannot read: {exc.strerror or exc}") from None
        src = str(p)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{src}: not valid TOML: {exc}") from None
    if data.get("format_version") != 1:
        raise CatalogueError(f"{src}: format_version: expected 1, got {data.get('format_version')!r}")
    devices = data.get("devices")
    if not isinstance(devices, dict) or not devices:
        raise CatalogueError(f"{src}: [devices]: expected at least one device table")
    cat = Catalogue({name: _parse_device(name, d, src) for name, d in devices.items()})
    cat.source = src
    return cat


@lru_cache(maxsize=1)
def default_catalogue() -> Catalogue:
    """The shipped catalogue (parsed once; entries are frozen)."""
    return load_catalogue()
