"""ARCHITECTURE.md rule 1: the simulation core imports no window, GL or database library."""

from __future__ import annotations

import subprocess
import sys

CORE = ["iratrainer.anatomy", "iratrainer.anatomy.atlas", "iratrainer.anatomy.io",
        "iratrainer.anatomy.lumen", "iratrainer.anatomy.tree", "iratrainer.physics.catalogue",
        "iratrainer.physics.chain", "iratrainer.physics.solver", "iratrainer.physics.stack",
        "iratrainer.physics.validate", "iratrainer.flow.network", "iratrainer.flow.contrast",
        "iratrainer.flow.thrombectomy", "iratrainer.flow.circulation", "iratrainer.flow.validate",
        "iratrainer.scenario.case", "iratrainer.scenario.track", "iratrainer.scenario.procedure",
        "iratrainer.scenario.autopilot", "iratrainer.scenario.authoring", "iratrainer.scenario.navigate",
        "iratrainer.scoring.rubric"]

BLOCK = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'pygame', 'OpenGL', 'sqlite3', 'sqlite_utils', 'moderngl'}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import importlib
for mod in %r:
    importlib.import_module(mod)
from iratrainer.anatomy.atlas import build_atlas
t = build_atlas()
t.signed_distance([[0.0, 0.0, 0.0]])
print('ok')
"""


def test_core_imports_without_window_gl_or_database():
    p = subprocess.run([sys.executable, "-c", BLOCK % (CORE,)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ok"
