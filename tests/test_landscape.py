import copy

import numpy as np
import pytest
import torch
from torch import nn

from helpers import assert_unchanged, snapshot
from sharpness.landscape import (
    between,
    flat_params,
    interpolate,
    pca_directions,
    random_directions,
    recompute_bn_buffers,
    surface,
)
from sharpness.objective import Objective


def conv_bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8, 3))


def data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 10, generator=g), torch.randint(0, 3, (n,), generator=g)


def warm_bn(model, x):
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x * 1.5 + 0.3)
    model.eval()
    return model


def test_filter_normalization_and_ignored_params():
    model = warm_bn(conv_bn_net(), data()[0])
    D = random_directions(model, 2, normalization="filter", seed=3)
    for d in D.vectors:
        i = 0
        for name, p in model.named_parameters():
            piece = d[i:i + p.numel()].view(p.shape)
            i += p.numel()
            if p.dim() <= 1:  # biases and BN γ/β: exactly zero
                assert torch.all(piece == 0), name
            else:
                for f_d, f_w in zip(piece, p.detach()):
                    assert torch.allclose(f_d.norm(), f_w.norm(), rtol=1e-5), name
    same = random_directions(model, 2, seed=3)
    assert torch.equal(same.vectors, D.vectors)
    assert not torch.equal(random_directions(model, 2, seed=4).vectors, D.vectors)
    layer = random_directions(model, 1, normalization="layer", seed=0).vectors[0]
    w = model[0].weight
    assert torch.allclose(layer[:w.numel()].norm(), w.norm(), rtol=1e-5)
    kept = random_directions(model, 1, ignore=None, seed=0).vectors[0]
    n0 = model[0].weight.numel()
    assert torch.equal(kept[n0:n0 + 4], model[0].bias.detach())  # Li et al. without ignore: d = w
    assert abs(D.cosine) < 0.5 and D.describe()["normalization"] == "filter"


def test_filter_normalization_of_conv2d_conv3d_and_embedding_weights():
    torch.manual_seed(1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(7, 3)
            self.c2 = nn.Conv2d(3, 4, 3, padding=1)     # 4-D weight
            self.c3 = nn.Conv3d(1, 2, 2)                # 5-D weight
            self.fc = nn.Linear(4 * 5 * 5 + 2, 2)

        def forward(self, ids, vol):  # two inputs: a batch ((ids, vol), y) calls model(ids, vol)
            h = self.c2(self.emb(ids).permute(0, 3, 1, 2)).flatten(1)
            return self.fc(torch.cat([h, self.c3(vol).mean((2, 3, 4))], 1))

    model = Net()
    D = random_directions(model, 1, normalization="filter", seed=0)
    i = 0
    for name, p in model.named_parameters():  # the reference: one filter at a time
        piece = D.vectors[0][i:i + p.numel()].view(p.shape)
        i += p.numel()
        if p.dim() > 1:
            for f in range(p.shape[0]):
                assert torch.allclose(piece[f].norm(), p[f].detach().norm(), rtol=1e-5), (name, f)
    x = (torch.randint(0, 7, (12, 5, 5)), torch.randn(12, 1, 3, 3, 3))
    s = surface(model, None, (x, torch.randint(0, 2, (12,))), steps=5, span=0.5)
    assert s.loss.shape == (5, 5) and np.isfinite(s.loss).all()


class _AllRanks(nn.Module):
    """Embedding (2-D), Conv1d (3-D), Conv2d (4-D), Conv3d (5-D) and Linear weights, BN between."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.c1 = nn.Conv1d(4, 3, 2)
        self.c2 = nn.Conv2d(1, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.c3 = nn.Conv3d(1, 2, (2, 2, 2))
        self.fc = nn.Linear(3 + 5 + 2, 3)

    def forward(self, ids, img, vol):
        h1 = self.c1(self.emb(ids).transpose(1, 2)).mean(2)
        h2 = torch.relu(self.bn(self.c2(img))).mean((2, 3))
        return self.fc(torch.cat([h1, h2, self.c3(vol).mean((2, 3, 4))], 1))


def _per_filter_reference(model, n, seed):
    """Li et al.'s filter normalization, one filter at a time in float64, from the same Gaussian draws."""
    gen = torch.Generator().manual_seed(seed)
    norm_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                   for p in m.parameters(recurse=False)}
    out = []
    for _ in range(n):
        pieces = []
        for p in model.parameters():
            d = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype).double()
            w = p.detach().double()
            if p.dim() <= 1 or id(p) in norm_params:
                d = torch.zeros_like(w)
            else:
                for f in range(w.shape[0]):  # filter f: every weight feeding output channel / row f
                    scale = float(torch.sqrt((w[f] ** 2).sum())) / float(torch.sqrt((d[f] ** 2).sum()))
                    d[f] = d[f] * scale
            pieces.append(d.reshape(-1))
        out.append(torch.cat(pieces))
    return torch.stack(out)


def test_filter_normalization_equals_a_per_filter_loop_for_weights_of_every_rank():
    torch.manual_seed(2)
    model = _AllRanks()
    ranks = sorted({p.dim() for p in model.parameters()})
    assert ranks == [1, 2, 3, 4, 5]
    for seed in (0, 7):
        D = random_directions(model, 2, normalization="filter", seed=seed)
        want = _per_filter_reference(model, 2, seed)
        assert D.vectors.shape == want.shape and D.vectors.dtype == torch.float32
        assert torch.allclose(D.vectors.double(), want, rtol=1e-5, atol=1e-7), seed
    batch = ((torch.randint(0, 6, (8, 5)), torch.randn(8, 1, 4, 4), torch.randn(8, 1, 3, 3, 3)),
             torch.randint(0, 3, (8,)))
    s = surface(model, None, batch, dims=1, steps=5, span=0.5)
    assert np.isfinite(s.loss).all() and s.directions.normalization == "filter"


def test_surface_of_a_conv2d_batchnorm_net_frozen_and_recomputed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3),
                          nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 1, 6, 6, generator=g), torch.randint(0, 3, (24,), generator=g)
    model = warm_bn(model, x)
    snap = snapshot(model)
    with torch.no_grad():
        own = float(nn.functional.cross_entropy(model(x), y))
    for bn in ("frozen", "recompute"):
        s = surface(model, None, (x, y), steps=3, span=0.3, bn=bn, seed=1)
        assert s.loss.shape == (3, 3) and np.isfinite(s.loss).all() and s.bn == bn
        assert s.loss.max() > s.loss.min()  # the directions move the loss
        if bn == "frozen":
            assert s.loss[1, 1] == pytest.approx(own, abs=1e-6)
    assert_unchanged(model, snap)

def test_interpolation_endpoints_exact_and_model_unchanged():
    x, y = data()
    a = warm_bn(conv_bn_net(0), x)
    b = warm_bn(conv_bn_net(1), x * 2)
    snaps = snapshot(a), snapshot(b)
    sets = {"train": (x, y), "test": data(40, 1)}
    for path in ("linear", "sin"):
        r = interpolate(a, b, None, sets, alphas=np.linspace(-1, 2, 6), path=path)
        i0, i1 = list(r.alphas).index(0.0), list(r.alphas).index(1.0)
        for name, (xs, ys) in sets.items():
            for model, i in ((a, i0), (b, i1)):
                with torch.no_grad():
                    own = float(nn.functional.cross_entropy(model(xs), ys))
                assert r.loss[name][i] == pytest.approx(own, abs=1e-6), (path, name)
        assert r.bn == "interpolate" and len(r.alphas) == 8  # 0 and 1 added to the 6 given
    assert_unchanged(a, snaps[0])
    assert_unchanged(b, snaps[1])
    # the curved path at α = 1/2 is (θ_a + θ_b)/√2 of each
    mid = interpolate(a, b, None, {"t": (x, y)}, alphas=[0.5], path="sin", bn="frozen")
    fm = Objective(a, None, (x, y))
    want = fm.evaluate((flat_params(a) + flat_params(b)) / np.sqrt(2))[0]
    assert mid.loss["t"][list(mid.alphas).index(0.5)] == pytest.approx(want, abs=1e-6)


def test_grid_is_cartesian_and_centre_is_the_model(tmp_path):
    x, y = data()
    model = warm_bn(conv_bn_net(), x)
    snap = snapshot(model)
    s = surface(model, None, (x, y), steps=5, span=0.5, seed=0)
    assert s.loss.shape == (5, 5) and np.array_equal(s.coords[0], [-0.5, -0.25, 0, 0.25, 0.5])
    with torch.no_grad():
        own = float(nn.functional.cross_entropy(model(x), y))
    assert s.loss[2, 2] == pytest.approx(own, abs=1e-6) and s.center_loss == pytest.approx(own, abs=1e-6)
    # every point is the one it claims: θ₀ + a_i δ₁ + b_j δ₂ (no staggered rows)
    fm = Objective(model, None, (x, y))
    t0, (d1, d2) = flat_params(model), s.directions.vectors
    for i, j in [(0, 4), (3, 1), (4, 0), (1, 3)]:
        want = fm.evaluate(t0 + s.coords[0][i] * d1 + s.coords[1][j] * d2)
        assert s.loss[i, j] == pytest.approx(want[0], abs=1e-6) and s.acc[i, j] == pytest.approx(want[1])
    line = surface(model, None, (x, y), dims=1, steps=7, span=(-1, 2))
    assert line.loss.shape == (7,) and np.allclose(line.coords[0], np.linspace(-1, 2, 7))
    assert_unchanged(model, snap)


def test_vmap_points_equal_one_by_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))
    one = surface(model, None, (x, y), steps=7, points_per_forward=1)
    many = surface(model, None, (x, y), steps=7, points_per_forward=6)
    assert np.allclose(one.loss, many.loss, atol=1e-6) and np.allclose(one.acc, many.acc)


def test_recompute_matches_hand_reestimated_bn():
    x, y = data()
    model = warm_bn(conv_bn_net(), x)
    D = random_directions(model, 2, seed=1)
    theta = flat_params(model) + 0.3 * D.vectors[0] - 0.2 * D.vectors[1]
    # by hand: a copy at θ, statistics reset and re-estimated over batches of 20, cumulative average
    hand = copy.deepcopy(model)
    torch.nn.utils.vector_to_parameters(theta, hand.parameters())
    hand[1].reset_running_stats()
    hand[1].momentum = None
    hand.train()
    with torch.no_grad():
        for xb in x.split(20):
            hand(xb)
    hand.eval()
    fm = Objective(model, None, (x, y))
    bufs = recompute_bn_buffers(fm, theta, fm.with_data((x, y), batch_size=20))
    assert torch.allclose(bufs["1.running_mean"], hand[1].running_mean, atol=1e-6)
    assert torch.allclose(bufs["1.running_var"], hand[1].running_var, atol=1e-6)
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(hand(x), y))
    s = surface(model, None, (x, y), directions=D, steps=3, span=1.0, bn="recompute", batch_size=20)
    got = fm.evaluate(theta, bufs)[0]
    assert got == pytest.approx(want, abs=1e-6)
    assert s.bn == "recompute" and np.isfinite(s.loss).all()


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    full = surface(model, None, (x, y), steps=5, seed=2)
    out = tmp_path / "grid.npz"
    calls = {"n": 0}
    real = Objective.evaluate

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Objective, "evaluate", flaky)
    with pytest.raises(KeyboardInterrupt):
        surface(model, None, (x, y), steps=5, seed=2, out=out)
    monkeypatch.setattr(Objective, "evaluate", real)
    partial = np.load(out)
    assert partial["done"].sum() == 9
    calls["n"] = 0
    def counting(self, *a, **k):
        calls["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(Objective, "evaluate", counting)
    resumed = surface(model, None, (x, y), steps=5, seed=2, out=out)
    assert calls["n"] == 25 - 9  # only the missing points were evaluated
    assert np.array_equal(resumed.loss, full.loss) and np.array_equal(resumed.acc, full.acc)


def test_between_and_pca_directions():
    torch.manual_seed(0)
    models = [nn.Linear(4, 3) for _ in range(6)]
    d = between(models[0], models[1]).vectors[0]
    assert torch.allclose(d, flat_params(models[1]) - flat_params(models[0]))
    P = pca_directions(models, n=2)
    V = P.vectors.double()
    assert torch.allclose(V @ V.T, torch.eye(2, dtype=torch.float64), atol=1e-6)
    M = torch.stack([flat_params(m) - flat_params(models[-1]) for m in models]).double()
    total = (M ** 2).sum()
    explained = ((M @ V.T) ** 2).sum(0) / total
    assert np.allclose(P.info["explained_variance_ratio"], explained.numpy(), atol=1e-6)
    assert np.allclose(P.info["trajectory_coords"], (M @ V.T).numpy(), atol=1e-6)


def test_eigenvector_directions_are_hessian_eigenvectors():
    from cases import dense_hessian
    from sharpness.landscape import eigenvector_directions

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    D = eigenvector_directions(model, None, (x, y), n=2, tol=1e-10)
    H = dense_hessian(model, nn.functional.cross_entropy, x, y)
    top = torch.linalg.eigvalsh(H).flip(0)[:2]
    for v, lam, want in zip(D.vectors, D.info["eigenvalues"], top):
        assert abs(float(v.norm()) - 1) < 1e-8 and abs(lam - float(want)) < 1e-8
        assert torch.linalg.norm(H @ v - lam * v) < 1e-6
    assert abs(D.cosine) < 1e-8
