"""Case files: the TOML that faculty write, validated at load (format 1).

A case names the patient (a bilingual vignette), the anatomy (atlas parameters or a
``*.vessels.json`` model beside the case), the access, the occlusions, the collateral
grade, the devices on the table, the C-arm setup, the goal (navigate to a vessel, or a
thrombectomy), the time limit, the learning objectives and scoring overrides. The
format is documented in ``cases/README.md``; every error names the file, the field and
what was expected, in one line.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from iratrainer.anatomy.tree import VesselTree
from iratrainer.errors import IratrainerError

__all__ = ["Case", "CaseError", "Goal", "Vignette", "load_case", "case_dirs", "list_cases", "default_case_path",
           "ACCESS_SITES", "LEVELS", "FORMAT_VERSION"]

FORMAT_VERSION = 1
LEVELS = ("navigation_basics", "arch", "intracranial", "thrombectomy")
# access site → (branch, where the sheath is: "end" = the distal end, entering against the flow)
# "model_root": a segmented head model; devices enter at the root (the cervical artery) with the flow.
ACCESS_SITES = {"right_femoral": "R_CFA", "left_femoral": "L_CFA", "right_radial": "R_SCA", "model_root": ""}
GOAL_KINDS = ("navigate", "thrombectomy")


class CaseError(IratrainerError):
    """A case file is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class Vignette:
    """The patient as the briefing presents them."""

    age: int
    sex: str
    nihss: int
    onset_min: int
    text: dict[str, str]
    imaging: dict[str, str]


@dataclass(frozen=True)
class Goal:
    """What ends the case successfully.

    ``navigate``: the tip of ``device`` (a catalogue kind or name) held in ``target`` for
    ``hold_s`` seconds. ``thrombectomy``: reperfusion (mTICI ≥ ``tici_success``) shown on a
    control DSA, then the devices removed.
    """

    kind: str
    target: str
    device: str = ""
    hold_s: float = 3.0
    tici_success: str = "2b"


@dataclass(frozen=True)
class Case:
    """A validated case (see the module docstring); ``path`` is where it came from."""

    path: Path
    id: str
    title: dict[str, str]
    level: str
    difficulty: int
    vignette: Vignette
    anatomy: dict[str, Any]
    access: str
    occlusions: tuple[Any, ...]
    collateral_grade: int
    devices: tuple[str, ...]
    carm: dict[str, Any]
    goal: Goal
    time_limit_min: float
    dose_limit_gy_cm2: float
    objectives: dict[str, tuple[str, ...]]
    scoring: dict[str, float]
    default: bool = False
    seed: int = 0
    content_hash: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def access_branch(self) -> str:
        """The branch where the sheath sits ("" for ``model_root``: the model's root)."""
        return ACCESS_SITES[self.access]

    def access_label(self, tree: VesselTree) -> str:
        """The access branch in ``tree``."""
        return self.access_branch or tree.labels[0]

    def load_tree(self) -> VesselTree:
        """Build or load the anatomy, checked against the case (labels, clots)."""
        from iratrainer.anatomy.atlas import AtlasParams, build_atlas
        from iratrainer.anatomy.io import load_vessels

        a = self.anatomy
        if "model" in a:
            mp = (self.path.parent / a["model"]).resolve()
            try:
                tree = load_vessels(mp)
            except IratrainerError as exc:
                raise CaseError(f"{self.path}: anatomy.model: {exc}") from None
        else:
            tree = build_atlas(AtlasParams(arch=a.get("arch", "I"), seed=a.get("seed"),
                                           tortuosity=float(a.get("tortuosity", 1.0)),
                                           bovine=bool(a.get("bovine", False))))
        self.check_tree(tree)
        return tree

    def load_background(self, tree: VesselTree | None = None) -> Any:
        """The patient's CT named by ``anatomy.background_ct`` (None: the default phantom).

        Raises :class:`CaseError` when the series cannot be read, is not a volume, or does
        not contain the vessel model (they must share the patient's frame).
        """
        rel = self.anatomy.get("background_ct")
        if not rel:
            return None
        from iratrainer.imaging.ct_background import CtBackground
        from iratrainer.segmentation.dicom_io import Volume, read_dicom

        where = f"{self.path}: anatomy.background_ct"
        try:
            vol = read_dicom([self.path.parent / rel])
        except IratrainerError as exc:
            raise CaseError(f"{where}: {exc}") from None
        if not isinstance(vol, Volume):
            raise CaseError(f"{where}: a 2-D run is not a CT volume")
        bg = CtBackground(np.asarray(vol.voxels, dtype=np.float32), np.asarray(vol.affine, dtype=np.float64),
                          str(rel))
        if tree is not None:
            lo, hi = bg.bounds_mm()
            tlo, thi = tree.bounds_mm()
            inside = np.all(tlo >= lo - 5.0) and np.all(thi <= hi + 5.0)
            if not inside:
                raise CaseError(f"{where}: the CT ({np.round(lo)}-{np.round(hi)} mm) does not contain the vessel "
                                f"model ({np.round(tlo)}-{np.round(thi)} mm): they must come from the same patient")
        return bg

    def check_tree(self, tree: VesselTree) -> None:
        """Raise :class:`CaseError` if the model does not have what the case names."""
        from iratrainer.flow.thrombectomy import ClotError

        where = f"{self.path}"
        if self.access_label(tree) not in tree:
            raise CaseError(f"{where}: access: the model has no '{self.access_branch}' for {self.access} access")
        if self.goal.target not in tree:
            raise CaseError(f"{where}: goal.target: the model has no branch '{self.goal.target}'")
        for k, occ in enumerate(self.occlusions):
            try:
                occ.validate(tree, f"occlusion[{k}]")
            except ClotError as exc:
                raise CaseError(f"{where}: {exc}") from None


def _get(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise CaseError(f"{where}.{key}: missing")
        return default
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or (isinstance(v, bool) and typ in (int, float)):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise CaseError(f"{where}.{key}: expected {names}, got {type(v).__name__} {v!r}")
    return v


def _bilingual(d: dict[str, Any], key: str, where: str) -> dict[str, str]:
    v = _get(d, key, dict, where)
    for lang in ("fr", "en"):
        if not isinstance(v.get(lang), str) or not v[lang].strip():
            raise CaseError(f"{where}.{key}.{lang}: expected a non-empty text in {'French' if lang == 'fr' else 'English'}")
    return {"fr": v["fr"], "en": v["en"]}


def load_case(path: str | Path) -> Case:
    """Load and validate a case file (structure, values, devices; anatomy is checked by :meth:`Case.load_tree`)."""
    from iratrainer.flow.thrombectomy import COMPOSITION, TICI_GRADES, ClotSpec
    from iratrainer.physics.catalogue import default_catalogue

    p = Path(path)
    try:
        raw_bytes = p.read_bytes()
    except OSError as exc:
        raise CaseError(f"{p}: cannot read the case file ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(raw_bytes.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CaseError(f"{p}: not valid TOML ({exc})") from None
    w = str(p)
    fmt = _get(data, "format", int, w)
    if fmt != FORMAT_VERSION:
        raise CaseError(f"{w}.format: this version reads format {FORMAT_VERSION}, the file says {fmt}")
    cid = _get(data, "id", str, w)
    if not cid or not all(c.isalnum() or c in "-_" for c in cid):
        raise CaseError(f"{w}.id: expected letters, digits, '-' or '_', got {cid!r}")
    title = _bilingual(data, "title", w)
    level = _get(data, "level", str, w)
    if level not in LEVELS:
        raise CaseError(f"{w}.level: expected one of {', '.join(LEVELS)}, got {level!r}")
    difficulty = _get(data, "difficulty", int, w, 1)
    if not 1 <= difficulty <= 5:
        raise CaseError(f"{w}.difficulty: expected 1 to 5, got {difficulty}")
    vg = _get(data, "vignette", dict, w)
    wv = f"{w}.vignette"
    sex = _get(vg, "sex", str, wv)
    if sex not in ("F", "M"):
        raise CaseError(f"{wv}.sex: expected 'F' or 'M', got {sex!r}")
    vignette = Vignette(_get(vg, "age", int, wv), sex, _get(vg, "nihss", int, wv, 0), _get(vg, "onset_min", int, wv, 0),
                        _bilingual(vg, "text", wv), _bilingual(vg, "imaging", wv))
    if not 0 <= vignette.nihss <= 42:
        raise CaseError(f"{wv}.nihss: expected 0 to 42, got {vignette.nihss}")
    anatomy = dict(_get(data, "anatomy", dict, w))
    wa = f"{w}.anatomy"
    if "background_ct" in anatomy:
        _get(anatomy, "background_ct", str, wa)
        if not (p.parent / anatomy["background_ct"]).exists():
            raise CaseError(f"{wa}.background_ct: not found: {p.parent / anatomy['background_ct']}")
    if "model" in anatomy:
        _get(anatomy, "model", str, wa)
        if not (p.parent / anatomy["model"]).is_file():
            raise CaseError(f"{wa}.model: file not found: {p.parent / anatomy['model']}")
    else:
        arch = _get(anatomy, "arch", str, wa, "I")
        if arch not in ("I", "II", "III"):
            raise CaseError(f"{wa}.arch: expected I, II or III, got {arch!r}")
        _get(anatomy, "seed", int, wa, 0)
        tort = _get(anatomy, "tortuosity", float, wa, 1.0)
        if not 0.0 <= tort <= 3.0:
            raise CaseError(f"{wa}.tortuosity: expected 0 to 3, got {tort}")
        _get(anatomy, "bovine", bool, wa, False)
    access = _get(data, "access", str, w)
    if access not in ACCESS_SITES:
        raise CaseError(f"{w}.access: expected one of {', '.join(ACCESS_SITES)}, got {access!r}")
    occl = []
    for k, o in enumerate(_get(data, "occlusion", list, w, [])):
        wo = f"{w}.occlusion[{k}]"
        if not isinstance(o, dict):
            raise CaseError(f"{wo}: expected a table")
        comp = _get(o, "composition", str, wo, "mixed")
        if comp not in COMPOSITION:
            raise CaseError(f"{wo}.composition: expected one of {', '.join(COMPOSITION)}, got {comp!r}")
        start = _get(o, "start_mm", float, wo)
        length = _get(o, "length_mm", float, wo)
        if start < 0 or not math.isfinite(start):
            raise CaseError(f"{wo}.start_mm: expected >= 0, got {start}")
        if length <= 0 or not math.isfinite(length):
            raise CaseError(f"{wo}.length_mm: expected > 0, got {length}")
        occl.append(ClotSpec(_get(o, "branch", str, wo), start, length, comp,
                             _get(o, "diameter_mm", float, wo, None)))
    grade = _get(data, "collateral_grade", int, w, 2)
    if not 0 <= grade <= 4:
        raise CaseError(f"{w}.collateral_grade: expected 0 to 4 (ASITN/SIR), got {grade}")
    cat = default_catalogue()
    devices = tuple(_get(data, "devices", list, w))
    for k, d in enumerate(devices):
        if not isinstance(d, str) or d not in cat:
            near = difflib.get_close_matches(str(d), list(cat), n=2, cutoff=0.0)
            raise CaseError(f"{w}.devices[{k}]: unknown device {d!r} (closest: {', '.join(near)})")
    carm = dict(_get(data, "carm", dict, w, {}))
    for key in ("frontal_lao_deg", "frontal_cran_deg", "lateral_lao_deg", "lateral_cran_deg", "fov_cm"):
        if key in carm:
            _get(carm, key, float, f"{w}.carm")
            carm[key] = float(carm[key])
    gd = _get(data, "goal", dict, w)
    wg = f"{w}.goal"
    kind = _get(gd, "kind", str, wg)
    if kind not in GOAL_KINDS:
        raise CaseError(f"{wg}.kind: expected one of {', '.join(GOAL_KINDS)}, got {kind!r}")
    goal = Goal(kind, _get(gd, "target", str, wg), _get(gd, "device", str, wg, ""), _get(gd, "hold_s", float, wg, 3.0),
                _get(gd, "tici_success", str, wg, "2b"))
    if goal.tici_success not in TICI_GRADES:
        raise CaseError(f"{wg}.tici_success: expected one of {', '.join(TICI_GRADES)}, got {goal.tici_success!r}")
    if kind == "thrombectomy" and not occl:
        raise CaseError(f"{w}.occlusion: a thrombectomy case needs at least one occlusion")
    if kind == "navigate" and goal.device and goal.device not in cat and goal.device not in {
            s.kind for s in cat.values()}:
        raise CaseError(f"{wg}.device: {goal.device!r} is neither a device nor a device kind of the catalogue")
    limit = _get(data, "time_limit_min", float, w, 90.0)
    if not 0 < limit <= 600:
        raise CaseError(f"{w}.time_limit_min: expected 0 to 600 minutes, got {limit}")
    dose_limit = _get(data, "dose_limit_gy_cm2", float, w, 500.0)
    obj = _get(data, "objectives", dict, w, {"fr": [], "en": []})
    objectives = {lang: tuple(str(x) for x in obj.get(lang, [])) for lang in ("fr", "en")}
    if len(objectives["fr"]) != len(objectives["en"]):
        raise CaseError(f"{w}.objectives: the French and English lists must have the same length")
    scoring = _get(data, "scoring", dict, w, {})
    for k, v in scoring.items():
        if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
            raise CaseError(f"{w}.scoring.{k}: expected a non-negative weight, got {v!r}")
    return Case(p, cid, title, level, difficulty, vignette, anatomy, access, tuple(occl), grade, devices, carm, goal,
                limit, dose_limit, objectives, {k: float(v) for k, v in scoring.items()},
                bool(_get(data, "default", bool, w, False)), _get(data, "seed", int, w, 0),
                hashlib.sha256(raw_bytes).hexdigest()[:16], data)


def case_dirs() -> list[Path]:
    """Where cases are looked for: the shipped library (``cases/``, installed as ``iratrainer.cases``)."""
    try:
        here = Path(str(resources.files("iratrainer.cases")))
    except ModuleNotFoundError:  # pragma: no cover - a broken install
        return []
    return [here] if here.is_dir() else []


def list_cases(dirs: list[Path] | None = None) -> list[Case]:
    """Every valid case in ``dirs`` (default: the shipped library), sorted by level and difficulty."""
    out = []
    for d in dirs or case_dirs():
        for f in sorted(d.glob("*.toml")):
            out.append(load_case(f))
    return sorted(out, key=lambda c: (LEVELS.index(c.level), c.difficulty, c.id))


def default_case_path() -> Path:
    """The case marked ``default = true`` in the shipped library."""
    for d in case_dirs():
        for f in sorted(d.glob("*.toml")):
            try:
                if tomllib.loads(f.read_text(encoding="utf-8")).get("default") is True:
                    return f
            except (OSError, tomllib.TOMLDecodeError):
                continue
    raise CaseError("no default case in the shipped library (cases/*.toml with default = true)")


def resolve_case(name_or_path: str) -> Path:
    """A path, or the id of a shipped case."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        return p
    for d in case_dirs():
        for f in d.glob("*.toml"):
            if f.stem == name_or_path:
                return f
        for f in d.glob("*.toml"):
            try:
                if tomllib.loads(f.read_text(encoding="utf-8")).get("id") == name_or_path:
                    return f
            except (OSError, tomllib.TOMLDecodeError):
                continue
    raise CaseError(f"{name_or_path}: no such case file or shipped case id")
