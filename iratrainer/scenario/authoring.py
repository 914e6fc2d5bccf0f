"""Case authoring from DICOM: segment, label like the atlas, write a case that plays.

``iratrainer case new --from-dicom INPUT... --occlusion LABEL --out cases/NAME.toml``:

1. reads the series (de-identified on import) and segments it into a vessel tree
   (:mod:`iratrainer.segmentation`);
2. **labels the main branches** by the atlas' topology and directions (LPS: +x is the
   patient's left, −y anterior, +z cranial): the side from where the tree lies; the root
   and its continuations are the ICA; at the ICA's end the two largest branches are the
   M1 (the one heading more laterally) and the A1; along the ICA a branch heading forward
   is the ophthalmic, one heading back the PCOM; the two largest branches of the M1 are
   the superior (higher) and inferior M2 trunks; the A1's largest child is the A2. Other
   branches keep their segmentation names. The labels are in the model file, which faculty
   can edit;
3. writes the model beside the case (``models/NAME.vessels.json``) with a preview PNG,
   and a case whose access is the model's root (``model_root``: a head model has no arch;
   the guide starts in the cervical artery), with the occlusion on the requested branch.

The written case is validated by loading it, tree included, before the command returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from iratrainer.anatomy.tree import Branch, VesselTree
from iratrainer.errors import IratrainerError

__all__ = ["label_like_atlas", "case_from_dicom", "AuthoringError"]


class AuthoringError(IratrainerError):
    """The segmented tree cannot be labelled or the case cannot be written."""


def _direction(b: Branch, length_mm: float = 15.0) -> np.ndarray:
    s = min(length_mm, b.length_mm)
    k = int(np.searchsorted(b.arc_mm, s))
    d = b.points_mm[min(k, len(b.points_mm) - 1)] - b.points_mm[0]
    n = float(np.linalg.norm(d))
    return d / n if n > 1e-9 else np.zeros(3)


def _split(tree: VesselTree, label: str, k: int, new_label: str) -> VesselTree:
    """Cut branch ``label`` at point ``k``: the rest becomes ``new_label``, its child at ``k``."""
    out = []
    for b in tree.branches:
        if b.label == label:
            out.append(Branch(b.label, b.parent, b.parent_index, b.points_mm[: k + 1], b.radii_mm[: k + 1]))
            out.append(Branch(new_label, b.label, k, b.points_mm[k:], b.radii_mm[k:]))
        elif b.parent == label and b.parent_index > k:
            out.append(Branch(b.label, new_label, b.parent_index - k, b.points_mm, b.radii_mm))
        else:
            out.append(b)
    return VesselTree(out, metadata=dict(tree.metadata), anastomoses=tree.anastomoses)


def label_like_atlas(tree: VesselTree) -> VesselTree:
    """Rename the main branches of a segmented carotid tree with atlas labels (see the module docstring)."""
    side = "L" if float(np.mean(np.vstack([b.points_mm for b in tree.branches])[:, 0])) > 0 else "R"
    lateral = 1.0 if side == "L" else -1.0
    names: dict[str, str] = {}
    t = tree
    # the ICA: the root, then its end-continuations of similar radius
    chain = [t.labels[0]]
    while True:
        b = t[chain[-1]]
        end_kids = [c for c in t.children(b.label) if t[c].parent_index >= len(b.points_mm) - 3]
        if len(end_kids) == 1 and t[end_kids[0]].radii_mm[:5].mean() >= 0.8 * float(np.median(b.radii_mm)):
            chain.append(end_kids[0])
            continue
        break
    for k, lab in enumerate(chain):
        names[lab] = f"{side}_ICA" + ("" if k == 0 else f"_{k + 1}")
    last = t[chain[-1]]
    end_kids = [c for c in t.children(last.label) if t[c].parent_index >= len(last.points_mm) - 3]
    if len(end_kids) < 2:
        # the segmentation ran the ICA on into one of its terminal branches: split it where
        # the last sizeable side branch leaves (the carotid T)
        r_ica = float(np.median(last.radii_mm))
        side_kids = [c for c in t.children(last.label) if float(t[c].radii_mm.mean()) >= 0.35 * r_ica
                     and t[c].parent_index < len(last.points_mm) - 3]
        if not side_kids:
            raise AuthoringError("no ICA bifurcation found in the segmented tree (is the whole carotid T in the volume?)")
        k = max(t[c].parent_index for c in side_kids)
        t = _split(t, last.label, k, f"{last.label}_cont")
        last = t[chain[-1]]
        end_kids = [c for c in t.children(last.label) if t[c].parent_index >= len(last.points_mm) - 3]
    end_kids = sorted(end_kids, key=lambda c: -float(t[c].radii_mm[:5].mean()))[:2]
    if len(end_kids) < 2:
        raise AuthoringError("no ICA bifurcation found in the segmented tree (is the whole carotid T in the volume?)")
    m1, a1 = sorted(end_kids, key=lambda c: -lateral * float(_direction(t[c])[0]))
    names[m1] = f"{side}_MCA_M1"
    names[a1] = f"{side}_ACA_A1"
    for lab in chain:  # side branches of the ICA
        for c in t.children(lab):
            if c in names:
                continue
            dy = float(_direction(t[c])[1])
            if dy < -0.3 and f"{side}_OPH" not in names.values():
                names[c] = f"{side}_OPH"
            elif dy > 0.3 and f"{side}_PCOM" not in names.values():
                names[c] = f"{side}_PCOM"
    # the M2 trunks: the M1's children, and children leaving right at the start of one of
    # them (the segmentation may place the division a voxel or two apart)
    cand = list(t.children(m1))
    cand += [g for c in t.children(m1) for g in t.children(c) if t[g].parent_index <= 3]
    m2 = sorted(cand, key=lambda c: -float(t[c].radii_mm[:5].mean()))[:2]
    if len(m2) == 2:
        sup, inf = sorted(m2, key=lambda c: -float(np.mean(t[c].points_mm[:, 2])))
        names[sup] = f"{side}_MCA_M2_SUP"
        names[inf] = f"{side}_MCA_M2_INF"
    a2 = sorted(t.children(a1), key=lambda c: -float(t[c].radii_mm[:5].mean()))[:1]
    if a2:
        names[a2[0]] = f"{side}_ACA_A2"
    used = set(names.values())
    clash = {lab for lab in t.labels if lab not in names and lab in used}
    for lab in clash:
        names[lab] = f"{lab}_seg"

    def rn(lab: str | None) -> str | None:
        return None if lab is None else names.get(lab, lab)

    branches = [Branch(rn(b.label), rn(b.parent), b.parent_index, b.points_mm, b.radii_mm)  # type: ignore[arg-type]
                for b in t.branches]
    meta = dict(t.metadata)
    meta["labels"] = "automatic, by atlas topology (iratrainer case new); edit freely"
    return VesselTree(branches, metadata=meta, anastomoses=[(rn(a), rn(b)) for a, b in t.anastomoses])  # type: ignore[misc]


CASE_TEMPLATE = """# Authored from DICOM by `iratrainer case new` ({source}).
# The model ({model}) was segmented and labelled automatically: check the labels in the
# preview ({preview}) and edit the model file if needed.
format = 1
id = "{cid}"
level = "thrombectomy"
difficulty = 3
seed = 1
time_limit_min = 90
dose_limit_gy_cm2 = 500
devices = ["balloon_guide_8F", "intermediate_6F", "microcatheter_021", "microwire_014", "stent_retriever_4x40"]
access = "model_root"
collateral_grade = 2

[title]
fr = "Occlusion {label} sur un modèle segmenté ({cid})"
en = "{label} occlusion on a segmented model ({cid})"

[vignette]
age = 65
sex = "F"
nihss = 16
onset_min = 150
text.fr = "Cas construit sur l'anatomie d'un patient (angioscanner anonymisé)."
text.en = "Case built on a patient's anatomy (de-identified CT angiography)."
imaging.fr = "Occlusion {label}."
imaging.en = "{label} occlusion."

[anatomy]
model = "{model}"

[[occlusion]]
branch = "{label}"
start_mm = {start:.1f}
length_mm = {length:.1f}
composition = "mixed"

[carm]
fov_cm = 22

[goal]
kind = "thrombectomy"
target = "{label}"
tici_success = "2b"

[objectives]
fr = ["Naviguer sur une anatomie de patient réelle", "Obtenir mTICI ≥ 2b"]
en = ["Navigate a real patient's anatomy", "Reach mTICI ≥ 2b"]
"""


def case_from_dicom(inputs: Sequence[str], occlusion: str, out: str | Path, access: str = "model_root",
                    progress: Callable[[str, float], None] | None = None) -> Path:
    """Segment ``inputs``, label, and write the model, its preview and a case at ``out``."""
    from iratrainer.anatomy.io import save_vessels
    from iratrainer.scenario.case import load_case
    from iratrainer.segmentation.dicom_io import Run2D, read_dicom
    from iratrainer.segmentation.preview import save_segmentation_preview
    from iratrainer.segmentation.vessel3d import segment_volume

    out = Path(out)
    if out.suffix != ".toml":
        raise AuthoringError(f"{out}: the case file must end in .toml")
    if not out.parent.is_dir():
        raise AuthoringError(f"{out}: folder {out.parent} does not exist")
    if access != "model_root":
        raise AuthoringError("a segmented head model is played from its root: --access model_root")
    data = read_dicom(inputs)
    if isinstance(data, Run2D):
        raise AuthoringError("a 2-D run (XA) has no depth: author cases from CTA, MRA or 3-D rotational angiography")
    seg = segment_volume(data, progress=progress)
    tree = label_like_atlas(seg.tree)
    if occlusion not in tree:
        raise AuthoringError(f"--occlusion: the labelled model has no '{occlusion}' (it has: "
                             f"{', '.join(lab for lab in tree.labels if '_' in lab)})")
    models = out.parent / "models"
    models.mkdir(exist_ok=True)
    model = models / f"{out.stem}.vessels.json"
    preview = models / f"{out.stem}.png"
    save_vessels(tree, model)
    save_segmentation_preview(data, tree, preview)
    blen = tree.length_mm(occlusion)
    start = min(3.0, 0.2 * blen)
    length = max(2.0, min(8.0, blen - start - 1.0))
    text = CASE_TEMPLATE.format(source=", ".join(str(Path(i).name) for i in inputs), model=f"models/{model.name}",
                                preview=f"models/{preview.name}", cid=out.stem, label=occlusion, start=start,
                                length=length)
    from iratrainer.anatomy.io import atomic_write_bytes

    atomic_write_bytes(out, text.encode("utf-8"))
    case = load_case(out)
    case.load_tree()
    return out
