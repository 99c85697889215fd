import pytest
import torch
from torch import nn

from sharpness import GhostBatchNorm, ModelSpec, SharpnessError, build_model


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
