"""Make docs/flow-dsa.png: a left ICA DSA with the M1 occluded, then after a successful pass.

Run from the repository root: ``python tools/flow_figure.py``. Frontal projection; the
contrast comes from the flow model (issue: flow), not from a painted mask.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from iratrainer.anatomy.atlas import build_atlas  # noqa: E402
from iratrainer.flow.circulation import Circulation  # noqa: E402
from iratrainer.flow.network import FlowNetwork  # noqa: E402
from iratrainer.flow.thrombectomy import ClotSpec, PassOutcome  # noqa: E402
from iratrainer.imaging.chain import PlaneChain  # noqa: E402
from iratrainer.imaging.dose import DoseMeter  # noqa: E402
from iratrainer.imaging.geometry import frontal  # noqa: E402
from iratrainer.imaging.scene import Scene  # noqa: E402


def run(circ: Circulation, tree: object, seconds: float, seed: int) -> list:
    plane = frontal(matrix=512, fov_cm=22.0, isocentre_mm=(25.0, 10.0, 215.0))
    chain = PlaneChain(plane, DoseMeter(), np.random.default_rng(seed))
    base = Scene(tree, 0.0)  # type: ignore[arg-type]
    circ.inject(tree.point_at("L_ICA", 110.0), 7.0, 5.0)  # type: ignore[attr-defined]

    def scene_at(t: float) -> Scene:
        circ.advance(max(0.0, t - circ.time_s))
        return Scene(base.tree, circ.segment_iodine(), (), base.phantom, t, *circ.blobs())

    return chain.dsa_run(scene_at, seconds, t0=circ.time_s)


def main() -> int:
    tree = build_atlas()
    net = FlowNetwork(tree, collateral_grade=2)
    circ = Circulation(net, [ClotSpec("L_MCA_M1", 8.0, 8.0)])
    before = run(circ, tree, 7.0, 1)
    circ.apply_pass(circ.clots[0], PassOutcome(1.0, 0, False, 1.0))
    circ.advance(20.0)
    after = run(circ, tree, 8.0, 2)
    frac, grade = circ.reperfusion()
    pick = [(before, 1.2, "M1 occluded, arterial phase (1.2 s)"),
            (before, 6.0, "M1 occluded, late (6 s): collateral filling"),
            (after, 1.2, "after the pass, arterial phase"), (after, 3.5, f"after the pass, capillary (mTICI {grade})"),
            (after, 6.7, "after the pass, venous phase")]
    fig, ax = plt.subplots(1, 5, figsize=(25, 5.6))
    for a, (frames, t, title) in zip(ax, pick, strict=True):
        f = min(frames[1:], key=lambda fr: abs((fr.time_s - frames[0].time_s) - t))
        a.imshow(f.display, cmap="gray", vmin=0, vmax=1)
        a.set_title(title, fontsize=10)
        a.axis("off")
    fig.tight_layout()
    out = Path("docs/flow-dsa.png")
    fig.savefig(out, dpi=70)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
