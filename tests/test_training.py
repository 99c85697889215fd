import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import same_state, tiny_config, train_interrupted
from sharpness import Schedule, SharpnessError, TrainConfig, load_checkpoint, train_model
from sharpness.cli import train_main
from sharpness.models import GhostBatchNorm


def _weights(path):
    return load_checkpoint(path).state_dict


def test_same_seed_same_run_and_history(tmp_path):
    cfg = tiny_config(epochs=2)
    a = train_model(cfg, tmp_path / "a", progress=False)
    b = train_model(cfg, tmp_path / "b", progress=False)
    c = train_model(tiny_config(epochs=2, seed=1), tmp_path / "c", progress=False)
    assert same_state(a.state_dict, b.state_dict) and not same_state(a.state_dict, c.state_dict)
    h = json.loads((tmp_path / "a" / "history.json").read_text())["history"]
    assert [e["epoch"] for e in h] == [0, 1, 2] and [e["step"] for e in h] == [0, 12, 24]  # epoch 0: before training
    assert [e["examples"] for e in h] == [0, 192, 384]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "wall_time", "lr", "batch_size",
                "dist_from_init"):
        assert all(math.isfinite(e[key]) for e in h), key
    assert h[2]["dist_from_init"] > h[1]["dist_from_init"] > h[0]["dist_from_init"] == 0
    assert (tmp_path / "a" / "done").exists() and (tmp_path / "a" / "init.pt").exists()
    # a finished run is returned, not retrained; a different config in the same folder is refused
    assert same_state(train_model(cfg, tmp_path / "a", progress=False).state_dict, a.state_dict)
    with pytest.raises(SharpnessError, match="different"):
        train_model(tiny_config(epochs=2, lr=0.5), tmp_path / "a", progress=False)


def test_resume_after_interrupt_is_bit_identical(tmp_path, monkeypatch):
    cfg = tiny_config(epochs=4, optimizer="sgd", momentum=0.9, lr=0.05, save_steps=[30], trace_log_steps=True)
    ref = train_model(cfg, tmp_path / "ref", progress=False)

    resumed = train_interrupted(cfg, tmp_path / "run", monkeypatch, at=12 * 2 + 5)  # mid-way through epoch 3
    assert same_state(ref.state_dict, resumed.state_dict)
    assert [e["train_loss"] for e in ref.history] == [e["train_loss"] for e in resumed.history]
    assert same_state(_weights(tmp_path / "ref" / "ckpt_step30.pt"), _weights(tmp_path / "run" / "ckpt_step30.pt"))
    assert resumed.extra["trace"] == ref.extra["trace"]


def test_trace_log_steps_records_distance_at_log_spaced_updates(tmp_path):
    run = train_model(tiny_config(epochs=3, trace_log_steps=True), tmp_path / "run", progress=False)
    trace = run.extra["trace"]
    assert [t["step"] for t in trace] == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32]  # 36 updates in all
    assert json.loads((tmp_path / "run" / "history.json").read_text())["trace"] == trace
    # the distance at the end of an epoch's last update equals the history's per-epoch value
    w0 = torch.cat([p.reshape(-1) for p in load_checkpoint(tmp_path / "run" / "init.pt").state_dict.values()])
    w = torch.cat([p.reshape(-1) for p in run.state_dict.values()])
    assert abs((w - w0).norm().item() - run.history[-1]["dist_from_init"]) < 1e-5
    assert all(a["dist_from_init"] < b["dist_from_init"] * 1.5 for a, b in zip(trace, trace[1:]))
    assert all(t["examples"] == 16 * t["step"] for t in trace)


def test_a_run_saved_before_a_field_existed_is_still_the_same_run(tmp_path):
    cfg = tiny_config(epochs=2)
    train_model(cfg, tmp_path / "run", progress=False)
    for name in ("final.pt", "last.pt"):  # as written by a version without trace_log_steps
        obj = torch.load(tmp_path / "run" / name, weights_only=True)
        del obj["config"]["trace_log_steps"]
        torch.save(obj, tmp_path / "run" / name)
    assert train_model(cfg, tmp_path / "run", progress=False).epoch == 2


def test_sigkill_mid_run_then_rerun_gives_same_weights(tmp_path):
    args = ["--dataset", "gaussian", "--data-arg", "n_train=2000", "--data-arg", "dim=20", "--model", "mlp",
            "--model-arg", "widths=[64,64]", "--batch-size", "8", "--epochs", "6", "--quiet"]
    cmd = [sys.executable, "-m", "sharpness.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd + ["--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "run")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (tmp_path / "run" / "ckpt_epoch2.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "done").exists(), "run finished before it could be killed"
    subprocess.run(cmd + ["--out", str(tmp_path / "run")], check=True, env=env, capture_output=True)
    assert same_state(_weights(tmp_path / "ref" / "final.pt"), _weights(tmp_path / "run" / "final.pt"))


def test_history_follows_schedule_smith_and_warmup(tmp_path):
    cfg = tiny_config(epochs=4, milestones=[2, 3], decay_factor=0.5, batch_growth=True, max_batch_size=40,
                      lr=0.01, warmup_epochs=1, warmup_from=0.001, optimizer="sgd")
    ckpt = train_model(cfg, tmp_path, progress=False)
    sched = Schedule.from_config(cfg)
    assert ckpt.history[0]["step"] == 0 and ckpt.history[0]["lr"] == sched.lr(0.0)  # epoch 0: before training
    h = ckpt.history[1:]
    assert [e["batch_size"] for e in h] == [16, 16, 32, 32]  # ×2 at 2; cap 40 → LR decays at 3
    assert math.isclose(h[3]["lr"], 0.005) and math.isclose(h[1]["lr"], sched.lr(1.99))
    assert [e["step"] for e in h] == [12, 24, 30, 36]


def test_ghost_batch_norm_is_used(tmp_path):
    cfg = tiny_config(epochs=1, model_args={"widths": [12], "bn": True}, ghost_batch_size=4)
    ckpt = train_model(cfg, tmp_path, progress=False)
    bns = [m for m in ckpt.model().modules() if isinstance(m, GhostBatchNorm)]
    assert bns and all(m.ghost_batch_size == 4 for m in bns)
    assert int(bns[0].num_batches_tracked) == 12 * 4  # 16-example batches, 4 ghost batches each


def test_toml_config_and_cli_flags(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "gaussian"\nmodel = "mlp"\nepochs = 1\nbatch_size = 64\n'
                    '[data_args]\nn_train = 128\nn_test = 32\n[model_args]\nwidths = [8]\n')
    cfg = TrainConfig.from_toml(toml)
    assert cfg.batch_size == 64 and cfg.model_args == {"widths": [8]}
    assert train_main([str(toml), "--batch-size", "32", "--lr", "0.01", "--quiet", "--out",
                       str(tmp_path / "out")]) == 0
    ckpt = load_checkpoint(tmp_path / "out" / "final.pt")
    assert ckpt.config["batch_size"] == 32 and ckpt.config["lr"] == 0.01 and ckpt.step == 4
    capsys.readouterr()
    toml.write_text("epochz = 3\n")
    assert train_main([str(toml), "--out", str(tmp_path / "x")]) == 2
    assert "unknown training option(s): epochz" in capsys.readouterr().err
    assert train_main(["--out", str(tmp_path / "y"), "--optimizer", "lion"]) == 2


def test_target_train_loss_stops_the_run_and_resume_does_not_train_past_it(tmp_path):
    free = train_model(tiny_config(epochs=8), tmp_path / "free", progress=False)
    losses = [e["train_loss"] for e in free.history[1:]]  # history[0]: epoch 0, before training
    target = losses[2] * 1.0001  # reached at the end of epoch 3, not before (the loss falls here)
    assert min(losses[:2]) > target and free.history[0]["train_loss"] > target
    cfg = tiny_config(epochs=8, target_train_loss=target)
    stopped = train_model(cfg, tmp_path / "run", progress=False)
    assert [e["epoch"] for e in stopped.history] == [0, 1, 2, 3] and stopped.epoch == 3
    assert stopped.history[-1]["train_loss"] <= target
    assert same_state(stopped.state_dict, _weights(tmp_path / "run" / "last.pt"))
    # killed between the last epoch's resume state and final.pt: a rerun must not train further
    (tmp_path / "run" / "done").unlink()
    (tmp_path / "run" / "final.pt").unlink()
    again = train_model(cfg, tmp_path / "run", progress=False)
    assert len(again.history) == 4 and same_state(again.state_dict, stopped.state_dict)
    with pytest.raises(SharpnessError, match="target_train_loss"):
        tiny_config(target_train_loss=0.0).validated()
