"""tools/stress.py (``make test-stress``) cleans up after a run: what the run left behind is killed, and nothing else."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from helpers import load_script

stress = load_script("tools/stress.py")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_kill_tree_kills_orphans_left_in_the_run_group_and_spares_the_rest():
    # the "run" starts a sleeper in the background and exits at once: the sleeper is re-parented to init, so
    # only its process group still ties it to the run
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    run = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!"], stdout=subprocess.PIPE, text=True,
                           start_new_session=True)
    orphan = int(run.stdout.readline())
    run.stdout.close()
    try:
        run.wait(10)
        assert _alive(orphan) and orphan not in stress.descendants(run.pid)
        assert stress.kill_tree(run) == 1
        deadline = time.time() + 10
        while _alive(orphan) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(orphan) and bystander.poll() is None
        assert stress.kill_tree(run) == 0  # a second call finds nothing and signals no reused pid
    finally:
        bystander.kill()
        bystander.wait()
        if _alive(orphan):
            os.kill(orphan, 9)
