"""Make docs/realism-lateral.png: the real lateral angiogram beside simulated ones.

Run from the repository root: ``python tools/realism_figure.py``. The real image is the
NEMA WG04 XA1 test image in ../shared/data (public DICOM test data).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402

from iratrainer.anatomy.atlas import build_atlas  # noqa: E402
from iratrainer.imaging.chain import PlaneChain  # noqa: E402
from iratrainer.imaging.dose import DoseMeter  # noqa: E402
from iratrainer.imaging.geometry import lateral  # noqa: E402
from iratrainer.imaging.scene import Scene, contrast_downstream, static_stack  # noqa: E402


def main() -> int:
    real_path = Path(sys.argv[1] if len(sys.argv) > 1 else
                     "../shared/data/angiograms/nema-wg04-xa1-lateral-cerebral.dcm")
    real = pydicom.dcmread(real_path).pixel_array.astype(float)
    real = (real - real.min()) / (real.max() - real.min())
    tree = build_atlas()
    plane = lateral(matrix=1024, fov_cm=30.0, isocentre_mm=(0.0, 0.0, 215.0))
    scene = Scene(tree, 0.0, static_stack(tree))
    iodine = contrast_downstream(tree, "L_ICA")
    chain = PlaneChain(plane, DoseMeter(), np.random.default_rng(0))
    dsa = chain.dsa_run(lambda t: scene.with_contrast(iodine if t > 0 else 0.0), 2.0)[-1]
    chain2 = PlaneChain(plane, DoseMeter(), np.random.default_rng(1))
    for _ in range(3):
        fl = chain2.fluoro_pulse(scene.with_contrast(iodine))
    fig, ax = plt.subplots(1, 3, figsize=(18, 6.4))
    for a, img, title in zip(ax, (real, dsa.display, fl.display), (
            "real lateral cerebral angiogram (NEMA WG04 XA1)",
            "iratrainer: lateral DSA, left ICA injection (atlas)",
            "iratrainer: lateral fluoroscopy with contrast (atlas)"), strict=True):
        a.imshow(img, cmap="gray", vmin=0, vmax=1)
        a.set_title(title, fontsize=10)
        a.axis("off")
    fig.tight_layout()
    out = Path("docs/realism-lateral.png")
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
