"""core/plots/ holds one module per flow, named as the flow, and `style` for what they share; the package itself loads
no matplotlib, so that a flow pays for it only when it draws its figures."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flows.registry import FLOWS

PLOTS = Path(__file__).resolve().parents[1] / "core" / "plots"


def test_each_plots_module_is_named_as_a_flow_and_each_flow_has_one():
    assert {path.stem for path in PLOTS.glob("*.py")} - {"__init__", "style"} == set(FLOWS)


def test_the_plots_package_loads_matplotlib_only_with_a_figure_module():
    script = ("import sys, core.plots; before = 'matplotlib' in sys.modules; import core.plots.deq; "
              "print(before, sys.modules['matplotlib'].get_backend())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PLOTS.parents[1],
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "Agg"]
