import numpy as np
import pytest
import torch
from torch import nn

from helpers import assert_unchanged, snapshot
from sharpness.curvature import HessianOperator, hessian_eigenvalues
from sharpness.measures import (
    adaptive_sharpness,
    eps_sharpness,
    gradient_noise_scale,
    rescale_relu_layers,
    weight_layers,
)


class SeparableQuadratic(nn.Module):
    """f(w) = Σ c_i (w_i − m_i)²/2 as a module + loss: the 'output' is the loss itself."""

    def __init__(self, c, m):
        super().__init__()
        self.register_buffer("c", torch.as_tensor(c, dtype=torch.float64))
        self.register_buffer("m", torch.as_tensor(m, dtype=torch.float64))
        self.w = nn.Parameter(self.m.clone())

    def forward(self, x):
        return (0.5 * self.c * (self.w - self.m) ** 2).sum().expand(len(x))


def quad_loss(out, y):
    return out.mean()


def test_eps_sharpness_quadratic_closed_form():
    rng = np.random.default_rng(0)
    c, m = rng.uniform(0.5, 3, 40), rng.normal(0, 2, 40)
    model = SeparableQuadratic(c, m)
    data = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4))
    for eps in (1e-3, 5e-4):
        r = eps_sharpness(model, quad_loss, data, eps=eps, max_iter=10, seed=1)
        closed = 100 * np.sum(c * eps ** 2 * (np.abs(m) + 1) ** 2 / 2)  # f0 = 0 at w = m
        assert r.f0 == 0 and abs(r.value - closed) <= 0.01 * closed, (r.value, closed)
        assert r.n_evals <= 25
    # at y = 0 the gradient vanishes: without the random start, L-BFGS-B would report 0
    assert torch.equal(model.w, model.m)


class Linear(nn.Module):
    """f(w) = gᵀw as a module + loss (with quad_loss): its maximum over a box is at a known corner."""

    def __init__(self, g, w):
        super().__init__()
        self.register_buffer("g", torch.as_tensor(g, dtype=torch.float64))
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64))

    def forward(self, x):
        return (self.g @ self.w).expand(len(x))


@pytest.mark.parametrize("draw", ["normal", "unit"])
def test_eps_sharpness_random_subspace_closed_form(draw):
    # max over y in ±ε(|A⁺w|+1) of gᵀ(w + Ay) − gᵀw = Σ_j |(Aᵀg)_j| ε(|(A⁺w)_j|+1), with A drawn as documented:
    # N(0, 1) entries (Keskar Table 4 as this toolkit reads it) or N(0, 1/n) ("unit"), from the seed.
    rng = np.random.default_rng(1)
    n, p, eps, seed = 30, 4, 1e-3, 3
    g, w = rng.normal(size=n), rng.normal(size=n)
    model = Linear(g, w)
    data = (torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2))
    r = eps_sharpness(model, quad_loss, data, eps=eps, subspace_dim=p, subspace_draw=draw, seed=seed)
    A = torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    A = A / np.sqrt(n) if draw == "unit" else A
    hw = eps * (np.abs(np.linalg.pinv(A) @ w) + 1)
    f0 = g @ w
    closed = 100 * np.sum(np.abs(A.T @ g) * hw) / (1 + f0)
    assert r.subspace_draw == draw and abs(r.f0 - f0) < 1e-12
    assert abs(r.value - closed) <= 1e-6 * abs(closed), (r.value, closed)
    with pytest.raises(ValueError, match="subspace_draw"):
        eps_sharpness(model, quad_loss, data, subspace_dim=p, subspace_draw="uniform")


def test_eps_sharpness_subspace_box_and_model_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x, y = torch.randn(50, 6, dtype=torch.float64), torch.randint(0, 3, (50,))
    snap = snapshot(model)
    full = eps_sharpness(model, nn.CrossEntropyLoss(), (x, y), eps=1e-2, seed=0)
    sub = eps_sharpness(model, nn.CrossEntropyLoss(), (x, y), eps=1e-2, subspace_dim=5, seed=0)
    again = eps_sharpness(model, nn.CrossEntropyLoss(), (x, y), eps=1e-2, subspace_dim=5, seed=0)
    assert_unchanged(model, snap)
    assert full.value > 0 and sub.value > 0 and sub.value == again.value
    assert full.f_max >= full.f0 and sub.subspace_dim == 5
    # the full-space perturbation stays in the box ±ε(|x|+1)
    xv = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert full.perturbation_norm <= float((1e-2 * (xv.abs() + 1)).norm()) + 1e-12
    sub_set = eps_sharpness(model, nn.CrossEntropyLoss(), (x, y), eps=1e-2, max_samples=20, seed=0)
    assert sub_set.n_samples == 20 and sub_set.max_samples == 20


def test_average_case_linear_mse_closed_form():
    # Linear model + MSE: L(w + δ) − L(w) = gᵀδ + δᵀHδ/2 exactly; E over δ ~ N(0, ρ²diag(c²)) is
    # ρ² Σ_i c_i² H_ii / 2. At the least-squares solution g = 0, so the draws vary only through δᵀHδ.
    torch.manual_seed(0)
    model = nn.Linear(5, 1, bias=False).double()
    x = torch.randn(128, 5, dtype=torch.float64)
    y = torch.randn(128, 1, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    w = model.weight.detach().reshape(-1)
    H = 2 * x.T @ x / 128  # Hessian of the mean squared error
    rho = 0.1
    closed = float(rho ** 2 * (w ** 2 * torch.diag(H)).sum() / 2)
    r = adaptive_sharpness(model, nn.MSELoss(), (x, y), rho, kind="average", norm="l2", n_samples=128,
                           batch_size=128, steps=4000, seed=0)
    assert abs(r.value - closed) < 0.05 * closed, (r.value, closed)
    std = adaptive_sharpness(model, nn.MSELoss(), (x, y), rho, kind="average", norm="l2", adaptive=False,
                             n_samples=128, batch_size=128, steps=4000, seed=0)
    closed_std = float(rho ** 2 * torch.diag(H).sum() / 2)
    assert abs(std.value - closed_std) < 0.05 * closed_std


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_worst_case_above_average_and_random_points(norm):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    rho = 0.05
    snap = snapshot(model)
    worst = adaptive_sharpness(model, None, (x, y), rho, kind="worst", norm=norm, n_samples=64, batch_size=64)
    avg = adaptive_sharpness(model, None, (x, y), rho, kind="average", norm=norm, n_samples=64, batch_size=64)
    assert_unchanged(model, snap)
    assert worst.value >= avg.value
    # the best of many random points on the boundary of the same ball is no better than APGD
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    c = w.abs()
    from sharpness.objective import Objective

    fm = Objective(model, None, (x, y))
    f0 = fm.loss_at(w)[0]
    best = -np.inf
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        if norm == "linf":
            u = (torch.randint(0, 2, w.shape, generator=g) * 2 - 1).float() * rho
        else:
            u = torch.randn(w.shape, generator=g)
            u = u / u.norm() * rho
        best = max(best, fm.loss_at(w + c * u)[0] - f0)
    assert worst.value >= best
    assert worst.n_evals == 1 + 21  # f0, then the start point and 20 APGD steps


def test_rescaling_changes_hessian_and_eps_not_adaptive():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    x, y = torch.randn(96, 5, dtype=torch.float64), torch.randint(0, 3, (96,))
    for _ in range(300):  # train a little so the point is near a minimum
        loss = nn.functional.cross_entropy(model(x), y)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    scaled = rescale_relu_layers(model, 1, 5.0)
    assert len(weight_layers(model)) == 3
    assert torch.allclose(model(x), scaled(x), atol=1e-6)
    lam = [hessian_eigenvalues(HessianOperator(m, None, (x, y)), k=1, tol=1e-8).values[0] for m in (model, scaled)]
    assert abs(lam[0] - lam[1]) > 0.1 * lam[0]
    eps = [eps_sharpness(m, None, (x, y), eps=1e-3, seed=0).value for m in (model, scaled)]
    assert abs(eps[0] - eps[1]) > 0.1 * eps[0]
    kw = dict(n_samples=96, batch_size=32, seed=0)
    for norm in ("l2", "linf"):
        a = [adaptive_sharpness(m, None, (x, y), 0.05, kind="average", norm=norm, **kw).value for m in (model, scaled)]
        assert abs(a[0] - a[1]) <= 1e-5 * abs(a[0])
    w = [adaptive_sharpness(m, None, (x, y), 0.05, kind="worst", **kw).value for m in (model, scaled)]
    assert abs(w[0] - w[1]) <= 1e-3 * abs(w[0])
    with pytest.raises(ValueError, match="Tanh"):
        rescale_relu_layers(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2)), 0, 2.0)


def test_noise_scale_exact_and_two_batch():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(400, 4, dtype=torch.float64), torch.randint(0, 3, (400,))
    snap = snapshot(model)
    exact = gradient_noise_scale(model, None, (x, y), batch_sizes="per-example", chunk=64)
    # direct computation of Σ from a loop of per-example gradients
    gs = []
    for i in range(len(y)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        gs.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    g = torch.stack(gs)
    G = g.mean(0)
    sigma = (g - G).T @ (g - G) / len(y)
    assert abs(exact.trace_sigma - float(torch.trace(sigma))) < 1e-9
    assert abs(exact.grad_norm_sq - float(G @ G)) < 1e-12
    assert abs(exact.b_simple - float(torch.trace(sigma) / (G @ G))) < 1e-6 * exact.b_simple
    two = gradient_noise_scale(model, None, (x, y), batch_sizes=(8, 128), n_batches=200, seed=0)
    assert two.method == "two-batch" and two.stderr > 0
    assert abs(two.b_simple - exact.b_simple) <= 3 * two.stderr, (two.b_simple, exact.b_simple, two.stderr)
    assert_unchanged(model, snap)


def test_pacbayes_flatness_quadratic_closed_form():
    # f(w) = Σ c_i (w_i − m_i)²/2 at w = m: E_{u∼N(0,σ²I)} f(m + u) = σ² Σc/2, so σ*² = 2δ/Σc (Jiang 2020's
    # pacbayes.flatness is 1/σ*²); magnitude-aware, u_i ∼ N(0, α²m_i² + ε²): α*² = (2δ − ε²Σc)/Σ c m².
    from sharpness.measures import pacbayes_flatness

    rng = np.random.default_rng(0)
    c, m = rng.uniform(0.5, 3, 200), rng.normal(0, 2, 200)
    model = SeparableQuadratic(c, m)
    data = (torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4))
    snap = snapshot(model)
    r = pacbayes_flatness(model, quad_loss, data, delta=0.1, n_draws=200, iters=30, seed=2)
    assert_unchanged(model, snap)
    assert r.value == pytest.approx(c.sum() / (2 * 0.1), rel=0.05) and r.value == pytest.approx(1 / r.sigma ** 2)
    assert abs(r.perturbed_loss - r.loss - 0.1) < 1e-6  # bisection lands on the δ boundary of the estimate
    assert r.stderr > 0 and r.n_draws == 200
    mag = pacbayes_flatness(model, quad_loss, data, delta=0.1, magnitude_aware=True, eps=1e-3, n_draws=200,
                            iters=30, seed=2)
    closed = (c * m ** 2).sum() / (2 * 0.1 - 1e-6 * c.sum())
    assert mag.value == pytest.approx(closed, rel=0.05) and mag.magnitude_aware
    again = pacbayes_flatness(model, quad_loss, data, delta=0.1, n_draws=200, iters=30, seed=2)
    assert again.value == r.value  # same seed, same draws


def test_norm_baselines_closed_form_on_diagonal_and_conv_weights():
    from sharpness.measures import norm_baselines

    lin = nn.Linear(3, 3, bias=True)
    conv = nn.Conv2d(2, 4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.diag(torch.tensor([3.0, -4.0, 1.0])))
        conv.weight.fill_(0.5)  # reshaped 4 × 18 of 0.5: Frobenius = spectral = 0.5·√72 (rank one)
    model = nn.ModuleList([lin, conv])
    r = norm_baselines(model)
    fro_conv = 0.5 * np.sqrt(72)
    assert r["n_layers"] == 2
    assert r["log_prod_fro"] == pytest.approx(np.log(np.sqrt(26)) + np.log(fro_conv))
    assert r["log_prod_spec"] == pytest.approx(np.log(4.0) + np.log(fro_conv))
    assert r["sum_fro_sq"] == pytest.approx(26 + fro_conv ** 2)


def test_distance_from_init_closed_form_on_linear_and_conv_weights():
    from sharpness import SharpnessError
    from sharpness.measures import distance_from_init

    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3, 2))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    u, v = torch.tensor([1.0, 2.0, 2.0]), torch.arange(18.0)  # the conv moves by the rank-one u vᵀ (3 × 18)
    with torch.no_grad():
        model[0].weight.add_(torch.outer(u, v).reshape(3, 2, 3, 3))
        model[2].bias.add_(torch.tensor([3.0, 4.0]))  # a bias counts in ‖w − w₀‖, not in the spectral sum
    snap = snapshot(model)
    r = distance_from_init(model, init)
    assert_unchanged(model, snap)
    dist = np.sqrt(float(u.square().sum() * v.square().sum()) + 25.0)
    norm0 = np.sqrt(sum(float(init[n].double().square().sum()) for n, _ in model.named_parameters()))
    assert r["distance"] == pytest.approx(dist) and r["relative"] == pytest.approx(dist / norm0)
    assert r["spec_dist_sq"] == pytest.approx(float(u.square().sum() * v.square().sum()))  # ‖u vᵀ‖₂ = ‖u‖‖v‖
    del init["2.weight"]
    with pytest.raises(SharpnessError, match=r"parameter 2.weight of shape \(2, 3\) is missing there"):
        distance_from_init(model, init)


def test_pacbayes_root_matches_a_tight_bisection_in_fewer_evaluations(monkeypatch):
    # The common-random-number estimate m(σ) = mean_i L(w + σ z_i) is a fixed function of σ: Brent's method
    # must land on its δ-crossing within 2^-iters of its bracket (hi/2, hi], as bisection would, with fewer
    # evaluations than bisection from (0, 1]. Reference: 60 bisection steps on the same draws (an MLP, not a quadratic).
    from sharpness import Objective
    from sharpness.measures import pacbayes_flatness

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    x, y = torch.randn(60, 5, dtype=torch.float64), torch.randint(0, 3, (60,))
    r = pacbayes_flatness(model, None, (x, y), delta=0.1, n_draws=8, iters=20, seed=4)
    obj = Objective(model, None, (x, y))
    w = obj.flat()
    z = torch.randn(8, obj.num_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    f0 = obj.evaluate()[0]

    def over(s):
        return np.mean([obj.evaluate(w + s * zi)[0] for zi in z]) > f0 + 0.1

    lo, hi = 0.0, 1.0
    while not over(hi):
        lo, hi = hi, 2 * hi
    brackets = int(np.log2(hi)) + 1 if hi > 1 else 1
    for _ in range(60):
        lo, hi = (lo, (lo + hi) / 2) if over((lo + hi) / 2) else ((lo + hi) / 2, hi)
    assert abs(r.sigma - lo) <= 2 * lo * 2.0 ** -20, (r.sigma, lo)  # within 2^-iters of its (hi/2, hi]
    assert abs(r.perturbed_loss - r.loss - 0.1) < 1e-4
    bisection_evals = 1 + 8 * (brackets + 20 + 1)
    assert r.n_evals < 0.75 * bisection_evals, (r.n_evals, bisection_evals)
    # the draws of one σ in a shared vmapped forward (as on CUDA) change nothing
    monkeypatch.setattr(Objective, "points_per_forward", lambda self: 3)
    v = pacbayes_flatness(model, None, (x, y), delta=0.1, n_draws=8, iters=20, seed=4)
    assert v.sigma == pytest.approx(r.sigma, rel=1e-9)
    m1 = pacbayes_flatness(model, None, (x, y), delta=0.1, magnitude_aware=True, n_draws=8, iters=20, seed=4)
    monkeypatch.undo()
    m2 = pacbayes_flatness(model, None, (x, y), delta=0.1, magnitude_aware=True, n_draws=8, iters=20, seed=4)
    assert m1.sigma == pytest.approx(m2.sigma, rel=1e-9)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_average_case_draws_in_a_vmapped_forward_equal_one_at_a_time(monkeypatch, norm):
    from sharpness import Objective

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3)).double()
    x, y = torch.randn(50, 5, dtype=torch.float64), torch.randint(0, 3, (50,))
    kw = dict(rho=0.2, kind="average", norm=norm, n_samples=50, batch_size=16, steps=7, seed=1)
    one = adaptive_sharpness(model, None, (x, y), **kw)
    monkeypatch.setattr(Objective, "points_per_forward", lambda self: 3)
    many = adaptive_sharpness(model, None, (x, y), **kw)
    assert np.allclose(one.per_batch, many.per_batch, rtol=1e-10, atol=1e-14) and len(one.per_batch) == 4
    assert np.ptp(one.per_batch) > 0  # four batches, four different averages
