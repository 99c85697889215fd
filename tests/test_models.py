
import pytest
import torch
from torch import nn

from helpers import user_module
from sharpness import GhostBatchNorm, ModelSpec, SharpnessError, build_model
from sharpness.models import MODELS, model_names, register_model


@pytest.mark.parametrize("name,shape,args", [
    ("mlp", (40,), {"widths": [16, 8], "bn": True}),
    ("mlp", (1, 8, 8), {"widths": [16], "activation": "tanh"}),
    ("keskar-f1", (1, 28, 28), {}),
    ("keskar-c1", (3, 32, 32), {}),
    ("keskar-c1", (1, 28, 28), {}),
    ("resnet20", (3, 32, 32), {}),
    ("mnist1d-cnn", (40,), {}),
])
def test_output_shapes(name, shape, args):
    torch.manual_seed(0)
    model = build_model(ModelSpec(name, {"input_shape": list(shape), "num_classes": 7, **args}))
    model.train()
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 7) and torch.isfinite(out).all()


def test_resnet20_size():
    model = build_model("resnet20", input_shape=(3, 32, 32), num_classes=10)
    # He et al. 2016 report 0.27M parameters for ResNet-20 (option A shortcuts; ours adds 1×1 convs).
    assert 0.26e6 < sum(p.numel() for p in model.parameters()) < 0.29e6


def test_unknown_model():
    with pytest.raises(SharpnessError, match="unknown model 'vgg'"):
        build_model("vgg", input_shape=(3,), num_classes=2)
    with pytest.raises(SharpnessError, match="bad arguments"):
        build_model("mlp", input_shape=(3,), num_classes=2, depth_typo=3)


@pytest.mark.parametrize("shape", [(37, 6), (37, 6, 5), (37, 6, 4, 3)])
def test_ghost_bn_equals_plain_bn_per_chunk(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 3 + 1
    ghost = GhostBatchNorm(6, ghost_batch_size=10)
    plain = nn.BatchNorm1d(6) if len(shape) < 4 else nn.BatchNorm2d(6)
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 2)
        ghost.bias.uniform_(-1, 1)
    plain.load_state_dict(ghost.state_dict())
    ghost.train(), plain.train()
    out = ghost(x)
    ref = torch.cat([plain(c) for c in x.split(10)])  # chunks of 10, 10, 10, 7
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(ghost.running_mean, plain.running_mean, atol=1e-6)
    assert torch.allclose(ghost.running_var, plain.running_var, atol=1e-6)
    assert int(ghost.num_batches_tracked) == 4
    # Statistics differ from full-batch BN (that is the point of ghost batches).
    full = nn.BatchNorm1d(6) if len(shape) < 4 else nn.BatchNorm2d(6)
    full.load_state_dict(plain.state_dict())
    assert not torch.allclose(out, full.train()(x), atol=1e-3)
    # Eval mode uses the running statistics, whatever the batch size.
    ghost.eval(), plain.eval()
    assert torch.allclose(ghost(x), plain(x), atol=1e-6)


USER_NETS = """
import math

from torch import nn


def make_net(width=4):
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))


def make_net2(input_shape, num_classes):
    assert isinstance(input_shape, tuple)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def make_any(**kw):
    return nn.Linear(kw["input_shape"][0], kw["num_classes"])


class Net(nn.Module):
    def __init__(self, input_shape, num_classes, hidden=5):
        super().__init__()
        self.fc = nn.Linear(input_shape[0], num_classes)


def not_a_module(width=4):
    return width
"""


@pytest.fixture
def nets(tmp_path, monkeypatch):
    return user_module(tmp_path, monkeypatch, "models_usernets", USER_NETS)


def test_user_factory_gets_the_data_args_only_if_it_takes_them(nets):
    data = {"input_shape": [3], "num_classes": 2}
    m = build_model(f"{nets}:make_net", width=6, **data)  # make_net takes neither
    assert m[0].weight.shape == (6, 3)
    m = build_model(ModelSpec(f"{nets}:make_net2", {"input_shape": [1, 2, 3], "num_classes": 4}))
    assert m[1].weight.shape == (4, 6)
    assert build_model(f"{nets}:make_any", **data).weight.shape == (2, 3)  # **kwargs takes them
    assert build_model(f"{nets}:Net", **data).fc.weight.shape == (2, 3)  # a class is a factory too
    assert build_model(f"{nets}:make_net", trusted=False, **data)[0].weight.shape == (4, 3)  # user's own code


def test_user_factory_errors(nets):
    with pytest.raises(SharpnessError, match=f"bad arguments for model '{nets}:make_net': .*depth"):
        build_model(f"{nets}:make_net", depth=3)
    with pytest.raises(SharpnessError, match=f"bad arguments for model '{nets}:make_net2'"):
        build_model(f"{nets}:make_net2", input_shape=(3,))
    with pytest.raises(SharpnessError, match=f"model factory '{nets}:not_a_module' returned int, not a torch"):
        build_model(f"{nets}:not_a_module")
    with pytest.raises(SharpnessError, match=r"^model 'mlp': widths must be a list of integers ≥ 1 \(got \[-1\]\)$"):
        build_model("mlp", input_shape=[3], num_classes=2, widths=[-1])
    with pytest.raises(SharpnessError, match="refused: model 'torch.nn:Linear'"):
        build_model("torch.nn:Linear", trusted=False, in_features=3, out_features=2)
    assert isinstance(build_model("torch.nn:Linear", in_features=3, out_features=2), nn.Linear)  # typed: trusted


def test_register_model_and_callable_specs(monkeypatch):
    monkeypatch.setattr(MODELS, "_fns", dict(MODELS._fns))  # registrations vanish after the test

    @register_model("tiny")
    def tiny(input_shape, num_classes):
        return nn.Linear(input_shape[0], num_classes)

    register_model("tiny2", lambda width=3: nn.Linear(2, width))
    assert {"tiny", "tiny2", "mlp"} <= set(model_names())
    assert build_model("tiny", input_shape=[5], num_classes=3).weight.shape == (3, 5)
    assert build_model({"name": "tiny2", "args": {"num_classes": 9}}, trusted=False).weight.shape == (3, 2)
    register_model("tiny2", tiny)  # replaces
    assert build_model("tiny2", input_shape=[4], num_classes=2).weight.shape == (2, 4)
    assert build_model(tiny, input_shape=(1,), num_classes=2).weight.shape == (2, 1)
    assert build_model(ModelSpec("mlp", {"widths": [3]}), input_shape=[2], num_classes=2)[1].weight.shape == (3, 2)


@pytest.mark.parametrize("args,message", [
    ({"widths": [0]}, r"model 'mlp': widths must be a list of integers ≥ 1 \(got \[0\]\)$"),
    ({"widths": [-3]}, r"widths must be a list of integers ≥ 1 \(got \[-3\]\)$"),
    ({"widths": [16, 2.5]}, r"widths must be a list of integers ≥ 1 \(got \[16, 2.5\]\)$"),
    ({"widths": [True]}, r"widths must be a list of integers ≥ 1"),
    ({"widths": 16}, r"widths must be a list of integers ≥ 1 \(got 16\)$"),
    ({"widths": "16,16"}, r"widths must be a list of integers ≥ 1 \(got '16,16'\)$"),
    ({"input_shape": [0]}, r"model 'mlp': input_shape must be a non-empty list of integers ≥ 1 \(got \[0\]\)$"),
    ({"input_shape": []}, r"input_shape must be a non-empty list of integers ≥ 1 \(got \[\]\)$"),
    ({"input_shape": [-1, 4]}, r"input_shape must be a non-empty list of integers ≥ 1"),
    ({"input_shape": 40}, r"input_shape must be a non-empty list of integers ≥ 1 \(got 40\)$"),
    ({"num_classes": 0}, r"model 'mlp': num_classes must be an integer in \[1, 100000\] \(got 0\)$"),
    ({"num_classes": None}, r"num_classes must be an integer in \[1, 100000\] \(got None\)$"),
    ({"num_classes": 2.0}, r"num_classes must be an integer in \[1, 100000\] \(got 2.0\)$"),
    ({"num_classes": 2**70}, r"num_classes must be an integer in \[1, 100000\] \(got 1180591620717411303424\)$"),
    ({"widths": [10**30]}, r"model 'mlp': widths must each be ≤ 100000 \(got \[1000000000000000000000000000000\]\)$"),
    ({"widths": [10**5, 10**5, 10**5]}, r"model 'mlp': these arguments make about 2e\+10 parameters; the built-in "
                                        r"models are limited to 1e\+09 \(an estimate from"),
    ({"input_shape": [10**4, 10**4]}, r"model 'mlp': input_shape \[10000, 10000\] holds 1e\+08 values per example; "
                                      r"the built-in models take at most 1e\+07$"),
    ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\) \(got 1.0\)$"),
    ({"bn": "yes"}, r"bn must be true or false \(got 'yes'\)$"),
    ({"activation": "swish"}, r"unknown activation 'swish'; known: relu"),
    ({"ghost_batch_size": 0}, r"ghost_batch_size must be an integer ≥ 1 or None \(got 0\)$"),
    ({"depth": 3}, r"bad arguments for model 'mlp': unknown argument 'depth'; accepted: input_shape, num_classes, "
                   r"widths, bn, activation, ghost_batch_size, dropout$"),
])
def test_mlp_arguments_are_checked_before_it_is_built(args, message, monkeypatch):
    def never(*a, **kw):
        raise AssertionError("the model was built")

    monkeypatch.setattr(nn.Linear, "__init__", never)
    with pytest.raises(SharpnessError, match=message) as info:
        build_model("mlp", **{"input_shape": [3], "num_classes": 2, "widths": [4], **args})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name,args,message", [
    ("resnet20", {"input_shape": [40]}, r"model 'resnet20': input_shape must have 3 entries \(got \[40\]\)$"),
    ("resnet20", {"width": 0}, r"model 'resnet20': width must be an integer in \[1, 100000\] \(got 0\)$"),
    ("resnet20", {"width": 10**4}, r"model 'resnet20': these arguments make about 1.1e\+11 parameters; the built-in "
                                   r"models are limited to 1e\+09"),
    ("keskar-c1", {"input_shape": [3, 1000, 1000]}, r"model 'keskar-c1': these arguments make about 1.5e\+09 "
                                                    r"parameters"),
    ("resnet20", {"input_shape": [1, 1000, 10**4]}, r"model 'resnet20': these arguments make about 1.6e\+08 values in "
                                                    r"the first layer per example; the built-in models are limited to "
                                                    r"1e\+08$"),
    ("mnist1d-cnn", {"input_shape": [40], "channels": 10**5}, r"model 'mnist1d-cnn': these arguments make about "
                                                              r"6e\+10 parameters"),
    ("keskar-f1", {"num_classes": 10**6}, r"model 'keskar-f1': num_classes must be an integer in \[1, 100000\]"),
    ("resnet20", {"n": 5}, r"model 'resnet20': unknown argument 'n'; accepted: input_shape, num_classes, width, "
                           r"ghost_batch_size$"),
    ("keskar-c1", {"input_shape": [1, 28]}, r"model 'keskar-c1': input_shape must have 3 entries"),
    ("keskar-c1", {"dropout": -0.1}, r"dropout must be a number in \[0, 1\)"),
    ("keskar-f1", {"num_classes": -1}, r"model 'keskar-f1': num_classes must be an integer in \[1, 100000\] "
                                        r"\(got -1\)$"),
    ("mnist1d-cnn", {"input_shape": [1, 2, 40]}, r"model 'mnist1d-cnn': input_shape must have 1 or 2 entries"),
    ("mnist1d-cnn", {"input_shape": [40], "channels": 0}, r"model 'mnist1d-cnn': channels must be an integer in "
                                                          r"\[1, 100000\] \(got 0\)$"),
])
def test_zoo_arguments_are_checked(name, args, message, monkeypatch):
    def never(*a, **kw):
        raise AssertionError("the model was built")

    for layer in (nn.Linear, nn.Conv1d, nn.Conv2d):
        monkeypatch.setattr(layer, "__init__", never)
    with pytest.raises(SharpnessError, match=message) as info:
        build_model(name, **{"input_shape": [3, 8, 8], "num_classes": 2, **args})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name,args", [
    ("mlp", {"input_shape": [40], "widths": [300, 100]}),
    ("mlp", {"input_shape": [1, 8, 8], "widths": [16], "bn": True}),
    ("keskar-f1", {"input_shape": [1, 28, 28]}),
    ("keskar-c1", {"input_shape": [3, 32, 32]}),
    ("keskar-c1", {"input_shape": [1, 9, 13]}),
    ("resnet20", {"input_shape": [3, 32, 32], "width": 8}),
    ("mnist1d-cnn", {"input_shape": [40]}),
    ("mnist1d-cnn", {"input_shape": [2, 57], "channels": 7}),
])
def test_the_size_estimate_that_bounds_zoo_models_is_close(name, args):
    from sharpness.models import _zoo_size

    args = {"num_classes": 10, **args}
    actual = sum(p.numel() for p in build_model(name, **args).parameters())
    estimate, _ = _zoo_size(name, args)
    assert 0.8 * actual <= estimate <= 1.2 * actual, (estimate, actual)


def test_a_model_registered_over_a_zoo_name_judges_its_own_arguments(monkeypatch):
    monkeypatch.setattr(MODELS, "_fns", dict(MODELS._fns))
    register_model("mlp", lambda input_shape, num_classes, widths=(): nn.Linear(2, 2))
    assert isinstance(build_model("mlp", input_shape=[3], num_classes=None, widths=[0]), nn.Linear)
