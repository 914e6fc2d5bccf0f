"""Make the shipped case built on a segmented model: cases/seg-l-m1-cta.toml.

The DICOM is a synthetic CT angiography (the atlas' left carotid tree voxelised with
contrast fading distally, noise and bone, written as a de-identified CT series by
:func:`iratrainer.segmentation.phantom.write_ct_series`); the case is then authored from
it exactly as faculty would from a patient's series: ``iratrainer case new --from-dicom``.

Run from the repository root: ``python tools/make_segmented_case.py``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from iratrainer.anatomy.atlas import build_atlas
from iratrainer.cli import main as cli
from iratrainer.segmentation.phantom import cta_volume, subtree, write_ct_series


def main() -> int:
    tree = subtree(build_atlas(), "L_ICA", depth=2)
    ph = cta_volume(tree, voxel_mm=0.6, margin_mm=5.0, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        write_ct_series(ph, tmp, seed=3)
        return cli(["case", "new", "--from-dicom", tmp, "--occlusion", "L_MCA_M1", "--out",
                    str(Path("cases") / "seg-l-m1-cta.toml")])


if __name__ == "__main__":
    sys.exit(main())
