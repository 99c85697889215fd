"""Warm starts (TrainConfig.init_from, Keskar 2017 Fig. 5), '@VARIANT/FILE' references in experiments,
curved-path pairs (Fig. 7) and per-measure settings in analyze."""

import json

import pytest

import sharpness as sh
from helpers import same_state, tiny_config
from sharpness import SharpnessError
from sharpness.experiments import expand, load_experiment, resolve_references, run_experiment

EXPERIMENT = """
name = "warm"
[base]
dataset = "gaussian"
data_args = { n_train = 96, n_test = 32, dim = 5, classes = 3 }
model = "mlp"
model_args = { widths = [8] }
lr = 0.01
[grid]
seed = [0, 1]
[[variants]]
name = "SB"
batch_size = 16
epochs = 2
save_every = 1
[[variants]]
name = "LB-k1"
batch_size = 48
epochs = 1
save_every = 0
init_from = "@SB/ckpt_epoch1.pt"
[analysis]
measures = ["loss"]
pairs = [["SB-seed0", "LB-k1-seed0"], ["SB-seed0", "LB-k1-seed0", "sin"]]
settings = { interpolation = { n_alphas = 5 } }
[figures]
kinds = ["table"]
"""


def test_init_from_starts_from_the_checkpoint_and_bad_ones_are_refused(tmp_path):
    first = sh.train_model(tiny_config(epochs=2, save_every=1), tmp_path / "a", progress=False)
    start = sh.load_checkpoint(tmp_path / "a" / "ckpt_epoch1.pt")
    warm = tiny_config(epochs=1, batch_size=48, init_from=str(tmp_path / "a" / "ckpt_epoch1.pt"))
    run = sh.train_model(warm, tmp_path / "b", progress=False)
    init = sh.load_checkpoint(tmp_path / "b" / "init.pt")
    assert same_state(init.state_dict, start.state_dict)  # w₀ of the warm run is the SB iterate
    assert run.history[0]["train_loss"] == pytest.approx(first.history[1]["train_loss"], rel=1e-6)
    assert run.history[0]["dist_from_init"] == 0 and run.history[-1]["dist_from_init"] > 0
    for bad, why in ((str(tmp_path / "nope.pt"), "nope.pt"),
                     (str(tmp_path / "a" / "final.pt"), "do not fit model")):
        cfg = tiny_config(model_args={"widths": [7]} if "final" in bad else {"widths": [12]}, init_from=bad)
        with pytest.raises(SharpnessError, match=why):
            sh.train_model(cfg, tmp_path / "c", progress=False)
        assert not (tmp_path / "c").exists()  # nothing written


def test_references_resolve_to_the_same_seeds_run_and_train_after_it(tmp_path):
    (tmp_path / "warm.toml").write_text(EXPERIMENT)
    spec = load_experiment(tmp_path / "warm.toml")
    runs = expand(spec)
    dirs = resolve_references(runs, tmp_path / "runs", "warm")
    cfg = dict(runs)
    assert cfg["LB-k1-seed1"].init_from == str(dirs["SB-seed1"] / "ckpt_epoch1.pt")
    path = run_experiment(tmp_path / "warm.toml", runs_root=tmp_path / "runs", figures_root=tmp_path / "fig",
                          progress=False)
    res = json.loads(path.read_text())
    sb = sh.load_checkpoint(dirs["SB-seed1"] / "ckpt_epoch1.pt")
    assert same_state(sh.load_checkpoint(dirs["LB-k1-seed1"] / "init.pt").state_dict, sb.state_dict)
    # Fig. 3 and Fig. 7: the straight and the curved path between the same two solutions
    lin, sin = res["pairs"]["SB-seed0→LB-k1-seed0"], res["pairs"]["SB-seed0→LB-k1-seed0 (sin)"]
    assert lin["alphas"] == sin["alphas"] and len(lin["alphas"]) == 7  # n_alphas = 5, and the two ends
    assert lin["train_loss"] != sin["train_loss"]
    for a in (0.0, 1.0):  # both paths pass through the two end points
        i = lin["alphas"].index(a)
        assert lin["train_loss"][i] == pytest.approx(sin["train_loss"][i], rel=1e-9)


@pytest.mark.parametrize("change, why", [
    ('init_from = "@XB/ckpt_epoch1.pt"', "names run 'XB-seed0'"),
    ('init_from = "@SB/ckpt_epoch3.pt"', "is not a checkpoint run SB-seed0 writes"),
    ('init_from = "@SB/model.bin"', "is not a checkpoint run SB-seed0 writes"),
])
def test_a_bad_reference_is_said_before_any_training(tmp_path, change, why):
    (tmp_path / "warm.toml").write_text(EXPERIMENT.replace('init_from = "@SB/ckpt_epoch1.pt"', change))
    with pytest.raises(SharpnessError, match=why):
        run_experiment(tmp_path / "warm.toml", runs_root=tmp_path / "runs", figures_root=tmp_path / "fig",
                       progress=False)
    assert not (tmp_path / "runs").exists()


def test_analyze_settings_override_a_measure_and_are_checked(tmp_path):
    sh.train_model(tiny_config(epochs=1), tmp_path / "r", progress=False)
    ckpt = tmp_path / "r" / "final.pt"
    rep = sh.analyze(ckpt, out=tmp_path / "an", measures=["landscape1d"], quick=True, figures=False,
                     settings={"landscape1d": {"steps": 7}})
    entry = rep.data["checkpoints"]["final"]["measures"]["landscape1d"]
    assert entry["settings"]["steps"] == 7 and rep.arrays["final/landscape1d/loss"].shape == (7,)
    again = sh.analyze(ckpt, out=tmp_path / "an", measures=["landscape1d"], quick=True, figures=False,
                       settings={"landscape1d": {"steps": 9}})  # other settings: not the cached result
    assert again.arrays["final/landscape1d/loss"].shape == (9,)
    for settings, why in (({"trace": {"rtol": 1e-3}}, "does not run"),
                          ({"landscape1d": {"stepz": 3}}, "unknown key"),
                          ({"landscape1d": 3}, "settings.landscape1d"),
                          ({"landscape1d": {"steps": "7"}}, "steps is '7', expected a value like 51 or 21"),
                          ({"landscape1d": {"span": True}}, "span is True")):
        with pytest.raises(SharpnessError, match=why):
            sh.analyze(ckpt, out=tmp_path / "bad", measures=["landscape1d"], settings=settings)
        assert not (tmp_path / "bad").exists()
