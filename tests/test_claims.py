"""Claims: one process computes a unit of work while another running the same config waits for it."""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import core.runs.claims
from core.runs.claims import STALE_S, claim
from test_kill import CONFIGS, finished_files

HOLD = """
import sys, time
from pathlib import Path
from core.runs.claims import claim
path, held, release = map(Path, sys.argv[1:4])
with claim(path):
    held.touch()
    while not release.exists():
        time.sleep(0.05)
"""


def wait_for(condition, what: str, limit: float = 60.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `limit` seconds (a hang, not a timing)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.05)


def claim_in_thread(path: Path) -> tuple[threading.Thread, threading.Event, list[dict]]:
    """Enter `claim(path)` in a thread: the event is set once it holds the claim; waits are recorded."""
    acquired, waits = threading.Event(), []

    def body() -> None:
        with claim(path, on_wait=waits.append):
            acquired.set()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, acquired, waits


def test_a_second_process_waits_for_the_holder_to_release(tmp_path):
    path, held, release = tmp_path / "claims" / "shard.claim", tmp_path / "held", tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(held), str(release)],
                              cwd=Path(__file__).parents[1])
    try:
        wait_for(held.exists, "the holder taking the claim")
        thread, acquired, waits = claim_in_thread(path)
        wait_for(lambda: waits, "the waiter noticing the holder")
        assert not acquired.is_set() and waits[0]["pid"] == holder.pid and waits[0]["host"] == socket.gethostname()
        release.touch()
        thread.join(60)
        assert acquired.is_set() and holder.wait(60) == 0 and not path.exists()
    finally:
        holder.kill()


def test_the_claim_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "shard.claim"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "token": "old"}))
    with pytest.warns(RuntimeWarning, match="taking over a claim whose holder is gone"):
        with claim(path):
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_another_hosts_claim_is_taken_over_only_when_its_heartbeat_stops(tmp_path):
    path = tmp_path / "shard.claim"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "theirs"}))
    thread, acquired, waits = claim_in_thread(path)
    wait_for(lambda: waits, "the waiter noticing the holder")
    assert not acquired.is_set() and waits[0]["host"] == "elsewhere"
    old = time.time() - STALE_S - 1
    with pytest.warns(RuntimeWarning, match=r"taking over a claim whose holder is gone \({'host': 'elsewhere'"):
        os.utime(path, (old, old))  # no heartbeat for longer than STALE_S
        thread.join(60)
    assert acquired.is_set()


def test_two_processes_judging_one_claim_stale_take_it_over_once(tmp_path):
    """The race of a stale-claim takeover, played in order: A and B both judged the dead holder's file stale;
    A moves it away and claims; B, late, moves A's fresh claim instead, sees it is not the file it judged, and
    puts it back. A keeps its claim, and B goes on waiting for it."""
    path = tmp_path / "shard.claim"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "token": "dead"}))
    judged_by_a, judged_by_b = core.runs.claims._read_claim(path), core.runs.claims._read_claim(path)
    assert core.runs.claims._take_over(path, judged_by_a)
    fresh = {"host": socket.gethostname(), "pid": os.getpid(), "token": "A"}
    assert core.runs.claims._try_create(path, fresh)
    inode = path.stat().st_ino  # often the dead holder's inode number again: the file system reuses it
    assert not core.runs.claims._take_over(path, judged_by_b)
    assert json.loads(path.read_text()) == fresh and path.stat().st_ino == inode  # the same file, put back
    assert not core.runs.claims._try_create(path, {"token": "B"})  # B must wait
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.claim"]  # nothing left aside
    path.unlink()
    assert not core.runs.claims._take_over(path, judged_by_b)  # gone: nothing to take over


def test_a_holder_keeps_its_claim_fresh_and_never_removes_anothers(tmp_path, monkeypatch):
    monkeypatch.setattr(core.runs.claims, "HEARTBEAT_S", 0.05)
    path = tmp_path / "shard.claim"
    with claim(path):
        os.utime(path, (0, 0))
        wait_for(lambda: path.stat().st_mtime > 0, "a heartbeat")
        path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "took it over"}))
    assert json.loads(path.read_text())["token"] == "took it over"


def test_two_processes_on_one_config_share_its_work_and_another_config_runs_beside(tmp_path, flow_processes):
    """Three processes at once: two on the same cscore config, one on a proxies config."""
    config = CONFIGS["cscore"].model_copy(update={"shard_size": 1})  # 8 shards to share
    flows = [("cscore", config), ("cscore", config), ("proxies", CONFIGS["proxies"])]
    # output goes to files: a claim holder blocked on a full pipe would stall the process waiting for it
    logs = [tmp_path / f"process-{i}" for i in range(3)]
    pids = [flow_processes.start(flow, c.model_dump_json(), tmp_path, "after", 100000, log) for (flow, c), log in zip(flows, logs)]
    codes = [flow_processes.wait(pid) for pid in pids]
    assert codes == [0, 0, 0], [Path(f"{log}.err").read_text()[-2000:] for log in logs]
    outputs = [(Path(f"{log}.out").read_text(), Path(f"{log}.err").read_text()) for log in logs]
    folders = [Path(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert folders[0] == folders[1] and folders[2].parent.name == "proxies"
    trained = [set(re.findall(r"(shards/runs-\d+\.parquet): 1 models on", err)) for _, err in outputs[:2]]
    assert trained[0].isdisjoint(trained[1]) and len(trained[0] | trained[1]) == 8  # every shard trained once
    runs = pd.read_parquet(folders[0] / "runs.parquet")
    assert runs["model_id"].tolist() == list(range(8))
    assert finished_files(folders[0]) and finished_files(folders[2])  # whole tables in both runs
