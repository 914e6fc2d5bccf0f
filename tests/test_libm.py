"""The numbers the simulation is built from do not depend on the processor's SIMD (iratrainer.libm)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iratrainer import libm

# NumPy's float64 functions that have AVX-512 code of their own (their last bit can differ
# from the C library's on a machine with AVX-512: numpy/numpy issue 23523)
SIMD_UFUNCS = ["sin", "cos", "tan", "exp", "log", "arccos", "arcsin", "arctan", "arctan2", "exp2", "log2",
               "log10", "expm1", "log1p", "cbrt", "sinh", "cosh", "tanh", "power", "hypot"]


@pytest.mark.parametrize("name, ref, lo, hi", [("sin", math.sin, -10, 10), ("cos", math.cos, -10, 10),
                                               ("tan", math.tan, -1.5, 1.5), ("exp", math.exp, -20, 20),
                                               ("log", math.log, 1e-6, 1e3), ("arccos", math.acos, -1, 1),
                                               ("power", lambda v: math.pow(v, 3.0), 1e-3, 30.0)])
def test_each_element_is_the_c_librarys(name, ref, lo, hi):
    """Every element equals Python's math (the C library) bit for bit, in the input's shape;
    a scalar gives a float."""
    a = np.random.default_rng(1).uniform(lo, hi, (7, 5))
    fn = (lambda v: libm.power(v, 3.0)) if name == "power" else getattr(libm, name)
    out = fn(a)
    assert out.shape == a.shape and out.dtype == np.float64
    assert all(out[i, j] == ref(a[i, j]) for i in range(7) for j in range(5))
    s = fn(float(a[0, 0]))
    assert isinstance(s, float) and s == ref(a[0, 0])
    assert fn(np.zeros(0)).shape == (0,)


def test_the_atlas_devices_and_c_arm_use_no_simd_transcendental(monkeypatch):
    """Building the atlases, a stack's rest shapes (as nodes come in), the C-arm's frames, the
    venous sinuses and the flow network (solved with narrowed cells) calls none of NumPy's
    SIMD transcendental functions by name: on a machine with AVX-512 their last bit differs,
    and the rods' chaotic trajectories with it. (``a ** p`` reaches NumPy's power without the
    name and is not seen here: the code uses ``libm.power``.)"""
    from iratrainer.anatomy.atlas import AtlasParams, build_atlas
    from iratrainer.flow.circulation import _sinus_path
    from iratrainer.flow.network import FlowNetwork
    from iratrainer.imaging.geometry import frontal, lateral
    from iratrainer.physics.catalogue import default_catalogue
    from iratrainer.physics.stack import DeviceStack, HubCommand

    cat = default_catalogue()
    names = ["vertebral_5F", "guidewire_035_angled"]

    def run(tree):
        st = DeviceStack(tree, [cat[n] for n in names], inserted_mm=[80.0, 120.0])
        for _ in range(40):  # advancing: nodes come in and the rest shapes are computed again
            st.step({n: HubCommand(40.0, 90.0) for n in names})
        return st

    run(build_atlas())  # the compiled kernels loaded before NumPy's functions are watched
    calls: list[str] = []
    for name in SIMD_UFUNCS:
        uf = getattr(np, name)

        def watched(*args, _uf=uf, _name=name, **kw):
            calls.append(_name)
            return _uf(*args, **kw)

        monkeypatch.setattr(np, name, watched)
    trees = [build_atlas(AtlasParams(arch=a)) for a in ("I", "II", "III")]
    trees.append(build_atlas(AtlasParams(arch="II", seed=3, tortuosity=1.3, bovine=True)))
    st = run(trees[1])
    for plane in (frontal(), lateral()):
        _ = plane.beam, plane.u
    _sinus_path()
    net = FlowNetwork(trees[0])
    net.radius_scale[net.cells_of("L_MCA_M1")] = 0.3
    net.solve()
    assert calls == []
    assert all(np.all(np.isfinite(r.x)) for r in st.rods)
