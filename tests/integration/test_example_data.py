"""examples/preprocess_pipeline.py runs on CPU (emulated GPU), learns, and
leaves nothing of its cluster behind."""
import os
import re
import subprocess
import sys

import psutil

from helpers import shm_files, spill_files, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _processes_of(session: str) -> list:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if session in " ".join(p.info["cmdline"] or ()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_preprocessing_example_trains_and_cleans_up():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "preprocess_pipeline.py"),
                           "--files", "2", "--rows", "3000", "--epochs", "3"],
                          capture_output=True, text=True, timeout=100, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    losses = [float(x) for x in re.search(r"epoch losses: (.*)", proc.stdout).group(1).split(",")]
    assert len(losses) == 3 and losses[-1] < losses[0] / 5      # it learns
    assert "MapBatches(Embedder)" in proc.stdout and "2 actors" in proc.stdout
    session = re.search(r"session: (\S+)", proc.stdout).group(1)
    wait_until(lambda: not _processes_of(os.path.basename(session)), timeout=15,
               what="the example's cluster processes to exit")
    assert not shm_files(session) and not spill_files(session)
