"""Data-parallel analyzers (torch.distributed, gloo, CPU processes started by torchrun) against one process."""

import os
import subprocess
import sys
from pathlib import Path

import distributed_worker
import pytest
import torch

from sharpness.distributed import shard

HERE = Path(__file__).parent


def torchrun(nproc: int, script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "--standalone", str(script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_shards_cover_every_example_once():
    for n in (1, 7, 23, 24):
        for world in (1, 2, 3, 5):
            parts = [shard(n, r, world) for r in range(world)]
            assert sorted(torch.cat(parts).tolist()) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("nproc", [2, 3])
def test_every_analyzer_equals_the_single_process_result(tmp_path, nproc):
    ref = distributed_worker.compute()
    r = torchrun(nproc, HERE / "distributed_worker.py", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in range(nproc):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for key, want in ref.items():
            assert torch.allclose(got[key].double(), want.double(), rtol=1e-6, atol=1e-9), (rank, key, got[key], want)
