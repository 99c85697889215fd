import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid
from torch import nn

from cases import dense_hessian, make_cases
from helpers import assert_unchanged, snapshot
from sharpness.curvature import HessianOperator, hessian_eigenvalues, hessian_trace, spectral_density
from sharpness.curvature.density import quadrature
from sharpness.curvature.lanczos import lanczos_tridiagonal

CASES = make_cases()
IDS = [c.name for c in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    return request.param


@pytest.mark.parametrize("batch_size", [None, 5])  # 23 samples in batches of 5: uneven last batch
def test_operator_equals_dense_hessian(case, batch_size):
    snap = snapshot(case.model)
    op = HessianOperator(case.model, case.loss_fn, (case.x, case.y), batch_size=batch_size)
    H = case.dense_hessian()
    assert torch.allclose(op.to_dense(), H, atol=1e-10)
    v = torch.randn(op.num_params, dtype=torch.float64)
    assert torch.allclose(op.matvec(v), H @ v, atol=1e-10)
    assert op.n_hvps == op.num_params + 1
    assert_unchanged(case.model, snap)


def test_train_mode_bn_and_mode_restored():
    case = CASES[2]
    case.model.eval()
    snap = snapshot(case.model)
    op = HessianOperator(case.model, case.loss_fn, (case.x, case.y), mode="train", batch_size=8)
    H = dense_hessian(case.model, case.loss_fn, case.x[:8], case.y[:8], mode="train")
    # with batch statistics, the Hessian is per batch: compare the first batch alone
    op8 = HessianOperator(case.model, case.loss_fn, (case.x[:8], case.y[:8]), mode="train")
    assert torch.allclose(op8.to_dense(), H, atol=1e-10)
    op.matvec(torch.ones(op.num_params, dtype=torch.float64))
    assert_unchanged(case.model, snap)  # running stats untouched, still in eval mode


def test_dataloader_and_dataset_inputs():
    case = CASES[1]
    ds = torch.utils.data.TensorDataset(case.x, case.y)
    H = case.dense_hessian()
    for data in (ds, torch.utils.data.DataLoader(ds, batch_size=6)):
        assert torch.allclose(HessianOperator(case.model, case.loss_fn, data).to_dense(), H, atol=1e-10)


def test_param_subset_and_unused_params():
    case = CASES[1]
    op = HessianOperator(case.model, case.loss_fn, (case.x, case.y), params="2.*")
    H = case.dense_hessian()
    n0 = sum(p.numel() for p in case.model[0].parameters())
    assert torch.allclose(op.to_dense(), H[n0:, n0:], atol=1e-10)

    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.unused = nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    m = WithUnused().double()
    x, y = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 2, (9,))
    D = HessianOperator(m, nn.CrossEntropyLoss(), (x, y)).to_dense()
    assert D.shape == (16, 16) and torch.all(D[8:] == 0) and torch.all(D[:, 8:] == 0)
    assert torch.allclose(D[:8, :8], dense_hessian(m.used, nn.CrossEntropyLoss(), x, y), atol=1e-10)


def test_dtype_option_leaves_model_alone():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    op = HessianOperator(m, nn.CrossEntropyLoss(), (x, y), dtype=torch.float64)
    assert op.dtype == torch.float64 and next(m.parameters()).dtype == torch.float32
    H = dense_hessian(m.double(), nn.CrossEntropyLoss(), x.double(), y)
    assert torch.allclose(op.to_dense(), H, atol=1e-10)


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_eigenvalues_match_eigvalsh(case, which):
    snap = snapshot(case.model)
    H = case.dense_hessian()
    ev = torch.linalg.eigvalsh(H).numpy()
    op = HessianOperator(case.model, case.loss_fn, (case.x, case.y), batch_size=10)
    r = hessian_eigenvalues(op, k=3, which=which, tol=1e-10, seed=1)
    want = {"largest": ev[::-1][:3], "smallest": ev[:3][::-1],
            "both": np.concatenate([ev[::-1][:3], ev[:3][::-1]])}[which]
    assert r.converged
    np.testing.assert_allclose(r.values, want, atol=1e-6 * max(1, abs(ev).max()))
    for lam, v in zip(r.values, r.vectors):  # vectors are eigenvectors, residuals honest
        assert torch.linalg.norm(H @ v - lam * v) <= 1e-6 * abs(ev).max()
    assert np.all(np.diff(r.values) <= 0) and r.n_hvps > 0
    assert_unchanged(case.model, snap)


def test_eigen_known_spectrum_with_restarts_and_power():
    rng = np.random.default_rng(0)
    spectrum = np.concatenate([[50.0, 30.0, 20.0, 12.0, 9.0], rng.uniform(-1, 1, 295)])
    Q, _ = np.linalg.qr(rng.normal(size=(300, 300)))
    H = torch.tensor((Q * spectrum) @ Q.T)
    r = hessian_eigenvalues(H, k=5, tol=1e-8, max_basis=20)  # forces thick restarts
    np.testing.assert_allclose(r.values, spectrum[:5], rtol=1e-10)
    assert r.converged and np.all(r.residuals <= 1e-8 * np.abs(r.values))
    p = hessian_eigenvalues(H, k=5, tol=1e-8, method="power", max_hvps=5000)
    np.testing.assert_allclose(p.values, spectrum[:5], rtol=1e-6)
    assert r.n_hvps < p.n_hvps
    s = hessian_eigenvalues(H, k=1, which="smallest", tol=1e-6)
    assert abs(s.values[0] - spectrum.min()) < 1e-6 * 50


def test_eigen_same_seed_same_result_and_budget():
    H = torch.tensor(np.diag(np.linspace(1, 2, 100)))
    a, b = hessian_eigenvalues(H, k=2, seed=3), hessian_eigenvalues(H, k=2, seed=3)
    assert np.array_equal(a.values, b.values) and a.n_hvps == b.n_hvps
    c = hessian_eigenvalues(H, k=2, tol=1e-14, max_hvps=10)
    assert not c.converged and c.n_hvps == 10


def test_trace_within_three_stderr(case):
    H = case.dense_hessian()
    op = HessianOperator(case.model, case.loss_fn, (case.x, case.y))
    for method in ("krylov-hutch++", "hutch++", "hutchinson"):
        t = hessian_trace(op, method=method, rtol=0, max_hvps=60, sketch_size=5, seed=0)
        assert abs(t.value - float(torch.trace(H))) <= 3 * t.stderr + 1e-9, (method, t)


def test_hutchpp_beats_hutchinson_at_equal_products():
    rng = np.random.default_rng(1)
    spectrum = 1.0 / np.arange(1, 401) ** 1.5 * 100  # decaying, as Hessian spectra do
    Q, _ = np.linalg.qr(rng.normal(size=(400, 400)))
    H = torch.tensor((Q * spectrum) @ Q.T)
    true = spectrum.sum()
    err = {"krylov-hutch++": [], "hutch++": [], "hutchinson": []}
    for seed in range(20):
        for method in err:
            t = hessian_trace(H, method=method, rtol=0, max_hvps=60, seed=seed)
            assert t.n_hvps == 60
            err[method].append(abs(t.value - true))
    assert np.mean(err["hutch++"]) < 0.5 * np.mean(err["hutchinson"])
    # over 300 seeds the ratio is 0.49–0.51 (before and after the start vector became Gaussian): 0.7 for 20
    assert np.mean(err["krylov-hutch++"]) < 0.7 * np.mean(err["hutch++"])
    t = hessian_trace(H, rtol=1e-3, max_hvps=5000)
    assert t.stderr <= 1e-3 * abs(t.value) and abs(t.value - true) < 4 * t.stderr + 1e-9 * true


def test_density_moments_match_dense_spectrum(case):
    H = case.dense_hessian()
    ev = torch.linalg.eigvalsh(H).numpy()
    op = HessianOperator(case.model, case.loss_fn, (case.x, case.y))
    d = spectral_density(op, n_runs=40, steps=op.num_params, seed=0)
    assert abs(trapezoid(d.density, d.grid) - 1) < 1e-6
    assert np.allclose(np.nansum(d.weights, 1), 1)
    # Per run, the quadrature is exact for low powers: Σ w θᵖ = vᵀHᵖv/‖v‖²; over runs, (1/P)tr(Hᵖ).
    for p in (1, 2):
        truth = (ev ** p).mean()
        runs = np.nansum(d.weights * d.nodes ** p, 1)
        assert abs(d.moment(p) - truth) <= 4 * runs.std() / np.sqrt(len(runs)) + 1e-9


def test_quadrature_is_exact_per_vector():
    torch.manual_seed(0)
    A = torch.randn(30, 30, dtype=torch.float64)
    H = (A + A.T) / 2
    v = torch.randn(30, dtype=torch.float64)
    a, b = lanczos_tridiagonal(H, v, 6)
    theta, w, _ = quadrature(a, b)
    u = v / v.norm()
    for p in range(0, 12):  # exact below degree 2·6
        assert abs((w * theta ** p).sum() - float(u @ torch.linalg.matrix_power(H, p) @ u)) < 1e-8 * 10 ** p


def test_model_unchanged_when_a_call_raises():
    case = CASES[2]
    snap = snapshot(case.model)

    def bad_loss(out, y):
        raise RuntimeError("boom")

    op = HessianOperator(case.model, bad_loss, (case.x, case.y), mode="train")  # the graph is built lazily
    with pytest.raises(RuntimeError, match="boom"):
        op.matvec(torch.ones(op.num_params, dtype=torch.float64))
    assert_unchanged(case.model, snap)


def test_scipy_linear_operator_view():
    from scipy.sparse.linalg import eigsh

    case = CASES[1]
    op = HessianOperator(case.model, case.loss_fn, (case.x, case.y))
    L = op.as_linear_operator()
    H = case.dense_hessian().numpy()
    v = np.random.default_rng(0).normal(size=op.num_params)
    assert np.allclose(L @ v, H @ v, atol=1e-10)
    top = eigsh(L, k=2, which="LA", return_eigenvectors=False)
    assert np.allclose(np.sort(top), np.linalg.eigvalsh(H)[-2:], atol=1e-8)


def test_trace_is_exact_when_the_dimension_fits_the_budget_and_says_why(case):
    H = case.dense_hessian()
    op = HessianOperator(case.model, case.loss_fn, (case.x, case.y))
    n = op.num_params
    t = hessian_trace(op, rtol=0, max_hvps=n)  # rtol 0 asks for the whole budget: P unit vectors are exact
    assert t.converged and t.reason == "exact (P unit vectors)" and t.n_hvps == n and t.stderr == 0.0
    assert t.value == pytest.approx(float(torch.trace(H)), rel=1e-10, abs=1e-12)
    # an estimate that cannot reach rtol inside the room the exact route leaves: the exact trace follows
    t = hessian_trace(op, rtol=1e-12, max_hvps=n + 40)
    assert t.converged and t.reason == "exact (P unit vectors)" and t.n_hvps <= n + 40
    assert t.value == pytest.approx(float(torch.trace(H)), rel=1e-10, abs=1e-12)
    # a big space and a small budget: an estimate that says it did not converge
    rng = np.random.default_rng(0)
    big = torch.tensor(np.diag(rng.uniform(0.5, 1.5, 500)) + 0.1 * rng.normal(size=(500, 500)))
    big = (big + big.T) / 2
    t = hessian_trace(big, rtol=1e-6, max_hvps=60)
    assert not t.converged and t.reason == "budget spent" and t.n_hvps == 60
    t = hessian_trace(big, rtol=0.05, max_hvps=400)
    assert t.converged and t.reason == "rtol reached"


@pytest.mark.parametrize("n", [120, 336, 603])
def test_an_unreachable_rtol_switches_to_the_exact_trace_once_it_is_cheaper(n):
    # A flat spectrum (deflation gains nothing) and rtol 1e-6: the estimate would need millions of samples.
    # It stops as soon as the P exact products cost less than what it still needs, not at the budget's end.
    rng = np.random.default_rng(n)
    A = rng.normal(size=(n, n))
    H = torch.tensor((A + A.T) / 2)
    t = hessian_trace(H, rtol=1e-6, max_hvps=1000)
    assert t.converged and t.reason == "exact (P unit vectors)"
    assert t.value == pytest.approx(float(torch.trace(H)), rel=1e-10, abs=1e-10)
    assert t.n_hvps <= n + 20 + 16  # P, the Krylov sketch (20) and min_samples in blocks of 8 (16)


def _kronecker(which):
    """H = I₃ ⊗ A (every eigenvalue of A three times) and its top or bottom five eigenvalues."""
    A = np.random.default_rng(0).normal(size=(30, 30))
    H = torch.tensor(np.kron(np.eye(3), (A + A.T) / 12))
    ev = np.linalg.eigvalsh(H.numpy())
    return H, ev[::-1][:5] if which == "largest" else ev[:5]


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_repeated_eigenvalues_are_found_with_their_multiplicity(which):
    # One Lanczos run sees one copy of each eigenvalue of I₃ ⊗ A.
    H, want = _kronecker(which)
    alone = hessian_eigenvalues(H, k=5, which=which, tol=1e-8, copies=False)
    assert alone.converged and not np.allclose(np.sort(alone.values), np.sort(want))  # what the check is for
    r = hessian_eigenvalues(H, k=5, which=which, tol=1e-8)
    assert r.converged and r.extra["copy_check"] == "none missed" and r.extra["copies_found"] >= 2
    assert np.allclose(np.sort(r.values), np.sort(want), atol=1e-7)
    V = r.vectors.double()
    assert torch.allclose(V @ V.T, torch.eye(5, dtype=torch.float64), atol=1e-6)  # five distinct vectors
    assert torch.allclose(V @ H @ V.T, torch.diag(torch.as_tensor(r.values)), atol=1e-6)


def _rotated(values, seed):
    """A symmetric matrix with this spectrum in a seeded random basis."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(values), len(values))))
    return torch.tensor((Q * np.asarray(values, float)) @ Q.T)


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_block_lanczos_matches_eigvalsh_with_one_pass_per_block(case, which):
    # On the users' shapes (BN, 1-D/2-D convs + LayerNorm, MSE/CE), uneven batches: the values, honest
    # residuals (checked against the dense H), and one matmat of block_size columns per step.
    H = case.dense_hessian()
    ev = torch.linalg.eigvalsh(H).numpy()
    op = HessianOperator(case.model, case.loss_fn, (case.x, case.y), batch_size=10)
    calls = []
    matmat = op.matmat
    op.matmat = lambda X: (calls.append(X.shape[1]), matmat(X))[1]
    r = hessian_eigenvalues(op, k=3, which=which, tol=1e-10, seed=1, method="block-lanczos", copies=False)
    want = {"largest": ev[::-1][:3], "smallest": ev[:3][::-1],
            "both": np.concatenate([ev[::-1][:3], ev[:3][::-1]])}[which]
    b = 6 if which == "both" else 3
    assert r.converged and r.method == "block-lanczos" and r.extra["block_size"] == b
    np.testing.assert_allclose(np.sort(r.values), np.sort(want), atol=1e-6 * max(1, abs(ev).max()))
    for lam, v, res in zip(r.values, r.vectors, r.residuals):
        true = float(torch.linalg.norm(H @ v - lam * v))
        assert true <= 1e-6 * abs(ev).max() and abs(true - res) <= 1e-8 * abs(ev).max()
    assert set(calls) == {b} and len(calls) == r.extra["passes"] and r.n_hvps == b * len(calls)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_block_lanczos_finds_multiplicities_by_itself(which):
    # I₃ ⊗ A: a block of 3 vectors sees all three copies without the copy check.
    H, want = _kronecker(which)
    r = hessian_eigenvalues(H, k=5, which=which, tol=1e-8, method="block-lanczos", block_size=3, copies=False)
    assert r.converged and np.allclose(np.sort(r.values), np.sort(want), atol=1e-7), (r.values, want)
    checked = hessian_eigenvalues(H, k=5, which=which, tol=1e-8, method="block-lanczos", block_size=3)
    assert checked.extra["copy_check"] == "none missed" and checked.extra["copies_found"] == 0
    V = r.vectors.double()
    assert torch.allclose(V @ V.T, torch.eye(5, dtype=torch.float64), atol=1e-6)


def test_block_lanczos_invariant_subspaces_budget_and_arguments():
    from sharpness.errors import SharpnessError
    # 6 distinct eigenvalues in 40 dimensions: the block space closes after a few steps (fresh directions
    # keep it going); the values are exact.
    H = _rotated(np.repeat([5.0, 3.0, 2.0, 1.0, -1.0, -4.0], [1, 2, 3, 4, 10, 20]), 5)
    r = hessian_eigenvalues(H, k=4, which="largest", tol=1e-10, method="block-lanczos", block_size=4)
    assert r.converged and np.allclose(r.values, [5, 3, 3, 2], atol=1e-9)
    s = hessian_eigenvalues(H, k=2, which="smallest", tol=1e-10, method="block-lanczos", block_size=2)
    assert s.converged and np.allclose(s.values, [-4, -4], atol=1e-9)
    same = hessian_eigenvalues(H, k=4, tol=1e-10, method="block-lanczos", block_size=4)
    assert np.array_equal(same.values, r.values)  # same seed, same result
    rng = np.random.default_rng(6)
    big = torch.tensor(np.diag(np.linspace(1, 2, 200)) + 0 * rng.normal(size=(200, 200)))
    c = hessian_eigenvalues(big, k=2, tol=1e-14, max_hvps=12, method="block-lanczos", block_size=4)
    assert not c.converged and c.n_hvps == 12 and c.extra["passes"] == 3
    with pytest.raises(SharpnessError, match="block_size is for"):
        hessian_eigenvalues(H, k=2, block_size=2)
    with pytest.raises(SharpnessError, match="block_size"):
        hessian_eigenvalues(H, k=2, method="block-lanczos", block_size=0)


def test_block_lanczos_edges_found_by_an_independent_check():
    # float32 on a rank-deficient Hessian (rounding-noise directions must not enter the basis); a last
    # block cut to the dimension left; a whole block invariant before k values are found; a budget
    # smaller than the block.
    torch.manual_seed(0)
    lin = nn.Linear(8, 2)
    x, y = torch.randn(3, 8), torch.randn(3, 2)
    op = HessianOperator(lin, nn.MSELoss(), (x, y))  # rank 6 of 18
    want = np.sort(np.linalg.eigvalsh(op.to_dense().double().numpy()))[::-1][:8]
    r = hessian_eigenvalues(op, k=8, tol=1e-3, method="block-lanczos", block_size=4)
    assert r.values.max() <= want[0] * (1 + 1e-5) and np.allclose(r.values, want, atol=1e-4 * want[0])
    V = r.vectors.double()
    assert torch.allclose(V @ V.T, torch.eye(8, dtype=torch.float64), atol=1e-5)
    A = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    H = A + A.T
    ev = np.linalg.eigvalsh(H.numpy())
    for k, b in ((4, None), (1, 2), (2, 3)):  # b does not divide n = 5
        e = hessian_eigenvalues(H, k=k, tol=1e-8, method="block-lanczos", block_size=b)
        assert e.converged and np.allclose(e.values, ev[::-1][:k], atol=1e-10), (k, b, e.values)
    five = _rotated(np.r_[[5.0] * 3, [1.0] * 37], 1)
    e = hessian_eigenvalues(five, k=5, tol=1e-8, method="block-lanczos", block_size=2, copies=False)
    assert e.converged and np.allclose(e.values, [5, 5, 5, 1, 1], atol=1e-9)
    z = hessian_eigenvalues(torch.zeros(40, 40, dtype=torch.float64), k=3, method="block-lanczos", block_size=2)
    assert len(z.values) == 3 and np.allclose(z.values, 0)
    c = hessian_eigenvalues(five, k=2, max_hvps=1, method="block-lanczos", block_size=4)
    assert c.n_hvps == 1 and not c.converged  # the block is cut to the budget
    assert c.extra["block_size"] == 1


def test_lanczos_goes_on_past_an_invariant_subspace_with_fewer_than_k_values():
    # A linear layer under MSE: H = (X̃ᵀX̃/N) ⊗ I₃, six distinct eigenvalues, each three times. One Krylov
    # space holds six directions; asking for eight used to return six values.
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).double()
    x, y = torch.randn(50, 5, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    op = HessianOperator(lin, nn.MSELoss(), (x, y))
    ev = np.sort(np.linalg.eigvalsh(op.to_dense().numpy()))[::-1]
    r = hessian_eigenvalues(op, k=8, tol=1e-8)
    assert r.converged and len(r.values) == 8 and np.allclose(r.values, ev[:8], atol=1e-9), (r.values, ev[:8])
    z = hessian_eigenvalues(torch.zeros(40, 40, dtype=torch.float64), k=3)
    assert len(z.values) == 3 and np.allclose(z.values, 0) and z.converged


def test_the_copy_check_covers_both_ends():
    # which="both" converged with missed copies at either end (the check ran for one end only).
    H, _ = _kronecker("largest")
    ev = np.sort(np.linalg.eigvalsh(H.numpy()))
    r = hessian_eigenvalues(H, k=3, which="both", tol=1e-8)
    assert r.converged and r.extra["copy_check"] == "none missed" and r.extra["copies_found"] >= 2
    assert np.allclose(np.sort(r.values), np.sort(np.r_[ev[-3:], ev[:3]]), atol=1e-7), r.values
    H = _rotated(np.repeat([7.0, 2.0, -3.0], [5, 10, 25]), 2)
    b = hessian_eigenvalues(H, k=3, which="both", tol=1e-8, method="block-lanczos", block_size=2)
    assert b.converged and np.allclose(b.values, [7, 7, 7, -3, -3, -3], atol=1e-7), b.values


def _true_residuals(H, r):
    V = r.vectors.double()
    return (H.double() @ V.T - V.T * torch.tensor(r.values)).norm(dim=0).numpy()


def test_eigen_edges_from_a_second_independent_check():
    # A null space at the wanted end (PSD Hessians): the copy check's tolerance is floored by ‖H‖ as the
    # search's is, else rounding passed for copies and converged was False.
    H = _rotated([3.0, 2.0, 1.0, 0, 0, 0, 0, 0], 0)
    r = hessian_eigenvalues(H, k=2, which="smallest", tol=1e-8)
    assert r.converged and np.allclose(r.values, 0, atol=1e-12)
    b = hessian_eigenvalues(H, k=2, which="both", tol=1e-8)
    assert b.converged and np.allclose(b.values, [3, 2, 0, 0], atol=1e-12)
    # Both ends reaching the same eigenvalue (rank one): each end's check deflates the other's vectors.
    one = torch.tensor(np.outer(np.arange(1.0, 6), np.arange(1.0, 6)))
    r = hessian_eigenvalues(one, k=2, which="both", tol=1e-8)
    assert torch.allclose(r.vectors @ r.vectors.T, torch.eye(4, dtype=torch.float64), atol=1e-10)
    # A Hessian of scale 1e-11: invariant-subspace tests are relative (they were absolute: every step a
    # breakdown, and a fresh direction dropped part of the Krylov space).
    A = _rotated([3.0, 1.0, -2.0, 0.5, 0.2], 1).numpy()
    tiny = torch.tensor(1e-11 * np.kron(np.eye(3), A))
    r = hessian_eigenvalues(tiny, k=4, tol=1e-6, max_basis=12)
    assert r.converged and np.allclose(r.values / 1e-11, [3, 3, 3, 1], atol=1e-6)
    assert np.all(_true_residuals(tiny, r) <= 1e-6 * 3e-11)
    # k = n: nothing can be missing.
    assert hessian_eigenvalues(torch.eye(3, dtype=torch.float64), k=3).converged
    # float32 block Lanczos: the residuals it reports are the true ones (dropped couplings re-measured).
    H32 = _rotated(np.r_[np.logspace(-3, 2, 30), -np.logspace(-3, 0, 10)], 1).float()
    r = hessian_eigenvalues(H32, k=3, which="smallest", method="block-lanczos", block_size=5, tol=1e-3)
    true = _true_residuals(H32, r)
    assert np.allclose(r.residuals, true, rtol=0.05, atol=1e-5)
    assert r.converged == bool(np.all(true <= 1e-3 * np.maximum(np.abs(r.values), 0.1) * 1.05))


def test_the_copy_check_keeps_its_set_orthonormal_at_a_straddling_cluster():
    # Three copies of 5 and 57 values at 1 ± 1e-3: the k-th value sits inside the cluster. A candidate
    # leaning on the found directions once entered the set and blew the values up to 160 (found by an
    # independent check); now each candidate is orthogonalized and measured by its own product.
    g = torch.Generator().manual_seed(24)
    Q, _ = torch.linalg.qr(torch.randn(60, 60, dtype=torch.float64, generator=g))
    ev = torch.cat([torch.full((3,), 5.0, dtype=torch.float64), 1 + 1e-3 * torch.randn(57, generator=g, dtype=torch.float64)])
    H = (Q * ev) @ Q.T
    want = np.sort(ev.numpy())[::-1][:5]
    for method in ("lanczos", "block-lanczos"):
        r = hessian_eigenvalues(H, k=5, method=method)
        assert r.values.max() <= 5 + 1e-6 and np.allclose(r.values, want, atol=1e-4), (method, r.values, r.extra)
        V = r.vectors
        assert torch.allclose(V @ V.T, torch.eye(5, dtype=torch.float64), atol=1e-8)


@pytest.mark.parametrize("spectrum,which,k", [
    (np.arange(1.0, 11.0), "smallest", 3),         # all positive: the found directions' 0 is not a copy
    (-np.arange(1.0, 11.0), "largest", 3),         # all negative, the mirror case
    (np.r_[-1.0, np.arange(1.0, 10.0)], "smallest", 2),
    (np.repeat([0.3, 0.7, 1.1, 2.0], 3), "smallest", 3),  # positive and repeated: three copies of 0.3
])
def test_the_copy_check_never_takes_the_deflated_directions_for_a_copy(spectrum, which, k):
    H = _rotated(spectrum, 4)
    want = np.sort(spectrum)[:k] if which == "smallest" else np.sort(spectrum)[::-1][:k]
    r = hessian_eigenvalues(H, k=k, which=which, tol=1e-8)
    assert r.converged and np.allclose(np.sort(r.values), np.sort(want), atol=1e-7), (r.values, r.extra)


def test_max_basis_must_leave_room_for_a_restart():
    from sharpness.errors import SharpnessError
    H = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    for which, k, basis in (("largest", 3, 4), ("smallest", 1, 2), ("both", 2, 5)):
        with pytest.raises(SharpnessError, match="max_basis must be"):
            hessian_eigenvalues(H, k=k, which=which, max_basis=basis)
    r = hessian_eigenvalues(H, k=3, max_basis=5, tol=1e-8)  # k + 2: restarts, and still right
    assert r.converged and np.allclose(r.values, [10, 9, 8])


# --- one Krylov pass shared by the eigenvalues, the trace and SLQ -----------------------------------


def test_krylov_block_equals_single_runs_and_the_tridiagonal_is_VtHV(case):
    from sharpness.curvature.lanczos import Krylov, start_vector
    op = HessianOperator(case.model, case.loss_fn, (case.x, case.y), batch_size=7)
    H = case.dense_hessian()
    starts = torch.stack([start_vector(op, s) for s in range(3)])
    block = Krylov(op, starts).extend(12)
    assert op.n_hvps == 3 * 12  # three runs, one matmat of width 3 per step
    for r in range(3):
        one = Krylov(op, starts[r]).extend(12)
        assert np.allclose(block.alphas(r), one.alphas(), rtol=0, atol=1e-10)
        assert np.allclose(block.betas(r), one.betas(), rtol=0, atol=1e-10)
        V = block.basis(r)
        T = np.diag(block.alphas(r)) + np.diag(block.betas(r), 1) + np.diag(block.betas(r), -1)
        assert torch.allclose(V @ V.T, torch.eye(12, dtype=V.dtype), atol=1e-10)
        assert np.allclose((V @ H @ V.T).numpy(), T, atol=1e-10)


def test_shared_krylov_gives_what_each_gives_alone():
    # A float64 matrix with a decaying spectrum, so the eigenvalue search converges inside the shared run.
    from sharpness.curvature.lanczos import Krylov, start_vector
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(150, 150)))
    spectrum = np.concatenate([[9.0, 7.0, 5.5, 4.0], 1.0 / np.arange(1, 147) ** 1.2])
    H = torch.tensor((Q * spectrum) @ Q.T)
    from sharpness.curvature.operator import DenseOperator
    op = DenseOperator(H)
    K = Krylov(op, start_vector(op, 4))
    dens = spectral_density(op, n_runs=3, steps=40, seed=4, krylov=K)
    used = op.n_hvps
    assert used == 3 * 40
    eig = hessian_eigenvalues(op, k=3, tol=1e-8, seed=4, copies=False, krylov=K)
    tr = hessian_trace(op, sketch_size=30, rtol=0, max_hvps=60, seed=4, krylov=K)
    assert eig.n_hvps == 0 and tr.n_hvps == 60 - 30 - 0  # the shared steps cost nothing again
    alone = DenseOperator(H)
    eig1 = hessian_eigenvalues(alone, k=3, tol=1e-8, seed=4, copies=False)
    tr1 = hessian_trace(alone, sketch_size=30, rtol=0, max_hvps=60, seed=4)
    dens1 = spectral_density(alone, n_runs=3, steps=40, seed=4)
    assert eig.converged and np.array_equal(eig.values, eig1.values)
    assert np.array_equal(eig.residuals, eig1.residuals)
    assert tr.value == tr1.value and tr.stderr == tr1.stderr
    assert np.allclose(dens.nodes, dens1.nodes, rtol=0, atol=1e-10)
    assert np.allclose(dens.weights, dens1.weights, rtol=0, atol=1e-10)
    assert np.allclose(eig.values, np.sort(spectrum)[::-1][:3], rtol=1e-8)


def test_shared_krylov_longer_than_the_basis_restarts_as_alone():
    # The run is longer than the eigenvalue search's basis: it leaves the run at its restart, as alone.
    from sharpness.curvature.lanczos import Krylov, start_vector
    from sharpness.curvature.operator import DenseOperator
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(120, 120)))
    spectrum = np.linspace(0.0, 1.0, 120) ** 3  # clustered at the bottom: slow for "smallest"
    H = torch.tensor((Q * spectrum) @ Q.T)
    a, b = DenseOperator(H), DenseOperator(H)
    K = Krylov(a, start_vector(a, 2)).extend(50)
    shared = hessian_eigenvalues(a, k=2, which="smallest", tol=1e-6, max_basis=20, max_hvps=400, seed=2,
                                 krylov=K)
    alone = hessian_eigenvalues(b, k=2, which="smallest", tol=1e-6, max_basis=20, max_hvps=400, seed=2)
    assert np.array_equal(shared.values, alone.values) and shared.converged == alone.converged
    assert shared.n_hvps == alone.n_hvps - 20  # the 20 steps before the restart came from the run


def test_krylov_argument_checked():
    from sharpness.curvature.lanczos import Krylov
    from sharpness.errors import SharpnessError
    H = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    with pytest.raises(SharpnessError, match="krylov must be a Krylov run"):
        hessian_eigenvalues(H, krylov="run")
    with pytest.raises(SharpnessError, match="a run over 4 parameters, the operator has 5"):
        hessian_trace(H, krylov=Krylov(torch.eye(4, dtype=torch.float64), torch.ones(4)))
    with pytest.raises(SharpnessError, match="built on another operator"):
        spectral_density(H, krylov=Krylov(H.clone(), torch.ones(5)))
    spectral_density(H, steps=3, krylov=Krylov(H, torch.ones(5)))  # the same matrix: accepted


# --- kept graphs over several batches, and the block route ------------------------------------------


@pytest.mark.parametrize("graph_bytes", [0.0, 1.0, None])  # none kept, the first only, all
def test_kept_graphs_over_batches_give_the_dense_hessian(graph_bytes):
    case = CASES[3]  # 4-D conv weights
    H = case.dense_hessian()
    op = HessianOperator(case.model, case.loss_fn, (case.x, case.y), batch_size=5, graph_bytes=graph_bytes)
    V = torch.randn(op.num_params, 3, dtype=torch.float64)
    assert torch.allclose(op.matmat(V), H @ V, atol=1e-10)
    kept = op._kept
    assert len(kept["graphs"]) == {0.0: 0, 1.0: 0, None: 5}[graph_bytes] and kept["complete"] == (graph_bytes is None)
    assert torch.allclose(op.matmat(V), H @ V, atol=1e-10)  # second product: from the kept graphs
    budget = 1.5 * HessianOperator(case.model, case.loss_fn, (case.x[:5], case.y[:5]))._grad_graph(
        0, case.x[:5], case.y[:5], ())[1]
    part = HessianOperator(case.model, case.loss_fn, (case.x, case.y), batch_size=5, graph_bytes=budget)
    assert torch.allclose(part.matmat(V), H @ V, atol=1e-10) and len(part._kept["graphs"]) == 1
    assert torch.allclose(part.matmat(V), H @ V, atol=1e-10)
    with torch.no_grad():  # new weights: the kept graphs are dropped, products follow the weights
        next(case.model.parameters()).mul_(1.5)
    try:
        assert torch.allclose(op.matmat(V), case.dense_hessian() @ V, atol=1e-10)
    finally:
        with torch.no_grad():
            next(case.model.parameters()).div_(1.5)


def test_a_shuffling_loader_keeps_all_graphs_or_none():
    case = CASES[1]
    H = case.dense_hessian()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(case.x, case.y), batch_size=6,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))
    V = torch.randn(sum(p.numel() for p in case.model.parameters()), 2, dtype=torch.float64)
    for budget, kept in ((None, 4), (1.0, 0)):
        op = HessianOperator(case.model, case.loss_fn, loader, graph_bytes=budget)
        for _ in range(3):  # other batches at every pass: a partly kept set would count examples twice
            assert torch.allclose(op.matmat(V), H @ V, atol=1e-10)
        assert len(op._kept["graphs"]) == kept


@pytest.mark.parametrize("batch_size", [None, 7])
def test_vectorized_block_equals_the_loop(case, batch_size):
    loop = HessianOperator(case.model, case.loss_fn, (case.x, case.y), batch_size=batch_size, block="loop")
    vmap = HessianOperator(case.model, case.loss_fn, (case.x, case.y), batch_size=batch_size, block="vmap")
    for m in (1, 4, 16):
        V = torch.randn(loop.num_params, m, dtype=torch.float64)
        assert torch.allclose(vmap.matmat(V), loop.matmat(V), rtol=0, atol=1e-10)
    assert loop.block == "loop" and HessianOperator(case.model, case.loss_fn, (case.x, case.y)).block == "loop"
