"""What the `regularity` command's quick answers import: configs and listings never load the training stack."""
import subprocess
import sys
from pathlib import Path

import pytest

from flows.registry import FLOWS

HEAVY_MODULES = ("torch", "matplotlib", "scipy", "sklearn", "prefect.server")  # and for a config, pandas
LOADED = ("import sys; from flows.cli import main; code = main({argv!r}); "
          "print(sorted(m for m in {heavy!r} if m in sys.modules)); sys.exit(code)")


@pytest.mark.parametrize("argv", [["config", "cscore"], ["config", "lime_pretrain"], ["ls"], ["ls", "--flow", "deq"]])
def test_config_and_ls_load_neither_torch_nor_plots_nor_the_prefect_server(argv, tmp_path):
    """What `regularity config` and `ls` answer never loads the training stack: they stay near a second, not the ~6 s
    that importing a flow's tasks, torch, scipy.stats and matplotlib took."""
    heavy = HEAVY_MODULES if argv[0] == "ls" else (*HEAVY_MODULES, "pandas")  # ls prints its table with pandas
    argv = [*argv, "--data-root", str(tmp_path)] if argv[0] == "ls" else argv
    done = subprocess.run([sys.executable, "-c", LOADED.format(argv=argv, heavy=heavy)], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_every_flows_config_validates_without_the_training_stack():
    """Each flow module's top level is its config and the flow's signature: the tasks, torch and the figures load
    inside the flow when it runs, so the UI's form, the CLI's validation and `config` never pay for them."""
    names = {name: entry.module for name, entry in FLOWS.items()}
    script = ("import sys, importlib; from flows.registry import FLOWS\n"
              "for entry in FLOWS.values(): entry.config_class()()\n"
              f"print(sorted(m for m in {(*HEAVY_MODULES, 'pandas')!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"a config of {sorted(names)} loads {done.stdout.strip()}"
