"""Run one flow in this process and SIGKILL it at its N-th atomic file write, for tests/test_kill.py.

Usage: python tests/kill_driver.py FLOW CONFIG_JSON DATA_ROOT (during|after) N
`during`: the N-th write's temp file gets half its bytes, then the process dies before the rename (what
a kill in the middle of writing a table leaves). `after`: it dies right after the N-th write lands.
Without a kill (N larger than the writes) it prints the run folder and exits 0.
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import store  # noqa: E402
from flows.registry import FLOWS  # noqa: E402


def die() -> None:
    """SIGKILL this process: no cleanup, no except or finally clause runs."""
    os.kill(os.getpid(), signal.SIGKILL)


def dying_write(mode: str, n: int):
    """`store.atomic_write` that kills the process at call `n`."""
    real, calls = store.atomic_write, [0]

    def write(path: Path, body) -> None:
        calls[0] += 1
        if calls[0] != n:
            return real(path, body)
        if mode == "after":
            real(path, body)
            die()

        def half(file) -> None:
            body(file)
            file.flush()
            file.truncate(max(1, file.tell() // 2))
            file.flush()
            os.fsync(file.fileno())
            die()

        real(path, half)

    return write


def main() -> None:
    flow_name, config_json, data_root, mode, n = sys.argv[1:6]
    flow, config_class = FLOWS[flow_name].load()
    store.atomic_write = dying_write(mode, int(n))
    print(flow(config_class.model_validate_json(config_json), data_root=data_root))


if __name__ == "__main__":
    main()
