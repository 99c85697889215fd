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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from helpers import tiny_config
    from sharpness import train_model

    # 193 examples: shards of 97 and 96 (2 ranks), 65/64/64 (3)
    return train_model(tiny_config(data_args={"n_train": 193, "n_test": 40, "dim": 6, "classes": 3}),
                       tmp_path_factory.mktemp("run") / "r", progress=False)


def test_torchrun_analyze_writes_one_report_equal_to_one_process(trained, tmp_path):
    import json

    from sharpness import analyze

    measures = ["loss", "eigenvalues", "trace", "eps_sharpness", "pacbayes", "landscape1d"]
    one = analyze(trained.path, out=None, measures=measures, quick=True, progress=False).data
    r = torchrun(2, Path("-m"), "sharpness.analyze", str(trained.path), "--out", str(tmp_path / "a"),
                 "--measures", ",".join(measures), "--quick", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("report:") == 1  # rank 0 speaks, once
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["settings"]["world_size"] == 2
    entry = rep["checkpoints"]["final"]
    assert entry["examples_per_rank"] == [97, 96] and entry["n_train"] == 193
    for m in measures:
        for k, v in one["checkpoints"]["final"]["measures"][m]["summary"].items():
            if isinstance(v, float):
                assert entry["measures"][m]["summary"][k] == pytest.approx(v, rel=1e-4, abs=1e-7), (m, k)


def test_torchrun_analyze_with_a_budget_takes_rank_0s_decisions(trained, tmp_path):
    import json

    # each rank's clock differs: the plan and every re-planned choice are rank 0's, or collectives would hang
    r = torchrun(2, Path("-m"), "sharpness.analyze", str(trained.path), "--out", str(tmp_path / "a"),
                 "--measures", "loss,eigenvalues,pacbayes,landscape2d", "--budget", "3", "--no-progress")
    assert r.returncode in (0, 1), r.stderr[-3000:]
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["plan"]["budget"] == 3 and rep["settings"]["world_size"] == 2
    assert set(rep["checkpoints"]["final"]["measures"]) == {"loss", "eigenvalues", "pacbayes", "landscape2d"}


def test_a_rank_that_dies_stops_the_job_with_an_error(tmp_path):
    script = tmp_path / "dies.py"
    script.write_text("import os, torch, torch.distributed as dist\\n"
                      "from sharpness.distributed import all_sum\\n"
                      "dist.init_process_group('gloo')\\n"
                      "if dist.get_rank() == 1:\\n"
                      "    os._exit(3)\\n"
                      "all_sum(torch.ones(3), 2)\\n")
    r = torchrun(2, script, timeout=90)
    assert r.returncode != 0 and "exitcode" in r.stderr and "3" in r.stderr


def test_torchrun_train_is_the_one_process_run_and_resumes_only_with_its_world_size(tmp_path):
    from helpers import tiny_config
    from sharpness import load_checkpoint, train_model

    # 193 examples in batches of 16: the last batch holds 1 example, so one rank has none of it
    cfg = tiny_config(data_args={"n_train": 193, "n_test": 40, "dim": 6, "classes": 3}, epochs=3)
    one = train_model(cfg, tmp_path / "one", progress=False)
    args = ["--dataset", "gaussian", "--data-arg", "n_train=193", "--data-arg", "n_test=40", "--data-arg", "dim=6",
            "--data-arg", "classes=3", "--model", "mlp", "--model-arg", "widths=[12]", "--batch-size", "16",
            "--epochs", "3", "--lr", "0.01", "--seed", "0", "--quiet"]
    r = torchrun(2, Path("-m"), "sharpness.train", "--out", str(tmp_path / "two"), *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("final.pt") == 1
    two = load_checkpoint(tmp_path / "two" / "final.pt")
    assert two.extra["world_size"] == 2 and two.extra["examples_per_rank"] == [97, 96]
    for k, v in one.state_dict.items():  # the same updates, summed in another order
        assert torch.allclose(two.state_dict[k], v, rtol=1e-4, atol=1e-5), k
    assert two.history[-1]["train_loss"] == pytest.approx(one.history[-1]["train_loss"], rel=1e-4)
    (tmp_path / "two" / "done").unlink()
    (tmp_path / "two" / "final.pt").unlink()
    r = torchrun(3, Path("-m"), "sharpness.train", "--out", str(tmp_path / "two"), *args)
    assert r.returncode != 0 and "resume it with as many (now 3)" in r.stderr


def test_torchrun_run_writes_the_results_of_one_process(tmp_path):
    import json

    from sharpness.experiments import run_experiment

    toml = tmp_path / "tiny.toml"
    toml.write_text('name = "tiny"\n[base]\ndataset = "gaussian"\n'
                    'data_args = { n_train = 101, n_test = 30, dim = 5, classes = 3 }\n'
                    'model = "mlp"\nmodel_args = { widths = [8] }\nepochs = 2\nlr = 0.01\nsave_every = 0\n'
                    '[grid]\nbatch_size = [64]\n[analysis]\nmeasures = ["loss", "eigenvalues"]\nquick = true\n'
                    '[figures]\nkinds = ["table"]\n')
    one = json.loads(run_experiment(toml, runs_root=tmp_path / "r1", figures_root=tmp_path / "f1").read_text())
    r = torchrun(2, Path("-m"), "sharpness.run", str(toml), "--runs", str(tmp_path / "r2"), "--figures",
                 str(tmp_path / "f2"), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("results:") == 1
    two = json.loads((tmp_path / "f2" / "tiny" / "results.json").read_text())
    a, b = one["runs"]["B64"]["final"], two["runs"]["B64"]["final"]
    assert b["eigenvalues"]["lambda_max"] == pytest.approx(a["eigenvalues"]["lambda_max"], rel=1e-4)
    assert b["loss"]["test_loss"] == pytest.approx(a["loss"]["test_loss"], rel=1e-4)


def test_torchrun_train_killed_and_restarted_ends_as_the_uninterrupted_run(tmp_path):
    import json
    import signal
    import time

    from sharpness import load_checkpoint

    args = ["--dataset", "gaussian", "--data-arg", "n_train=101", "--data-arg", "n_test=20", "--data-arg", "dim=5",
            "--data-arg", "classes=3", "--model", "mlp", "--model-arg", "widths=[8]", "--model-arg", "bn=true",
            "--batch-size", "16", "--epochs", "150", "--lr", "0.01", "--seed", "1", "--save-every", "0", "--quiet"]
    assert torchrun(2, Path("-m"), "sharpness.train", "--out", str(tmp_path / "whole"), *args).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "sharpness.train", "--out", str(tmp_path / "cut"), *args]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = tmp_path / "cut" / "history.json"
    deadline = time.time() + 60
    while time.time() < deadline:  # kill once a few epochs are done
        try:
            if len(json.loads(history.read_text())["history"]) > 20:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=60)
    assert not (tmp_path / "cut" / "done").exists(), "finished before it was killed: nothing tested"
    assert torchrun(2, Path("-m"), "sharpness.train", "--out", str(tmp_path / "cut"), *args).returncode == 0
    a, b = load_checkpoint(tmp_path / "whole" / "final.pt"), load_checkpoint(tmp_path / "cut" / "final.pt")
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)  # BN buffers included
    assert a.history[-1] == {**b.history[-1], "wall_time": a.history[-1]["wall_time"]}
