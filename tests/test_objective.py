"""The objective on the user's setting: any reduction, batching, batch structure, streaming, stale weights."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset, TensorDataset

from helpers import assert_unchanged, snapshot
from sharpness import (
    HessianOperator,
    Objective,
    SharpnessError,
    eps_sharpness,
    gradient_noise_scale,
    hessian_eigenvalues,
    make_loss,
    surface,
)
from sharpness.batches import Batches


def _flat_fn(model, f):
    """θ ↦ f(params(θ)) for a dense reference Hessian."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def g(theta):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = theta[i:i + s.numel()].view(s)
            i += s.numel()
        return f(params)

    return g, flat


def hessian(g):
    # Reverse-over-reverse: torch.func.hessian (forward-over-reverse) is wrong for nn.Embedding on torch
    # 2.13 (off by 3e-2 here), as it is for train-mode BatchNorm (cases.py).
    return lambda flat: torch.autograd.functional.hessian(g, flat)


def _regression(n=29, d_in=4, d_out=3, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, 6), nn.Tanh(), nn.Linear(6, d_out)).double()
    return model, torch.randn(n, d_in, dtype=torch.float64), torch.randn(n, d_out, dtype=torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_any_reduction_and_batching_is_the_hessian_of_the_data_mean(reduction):
    model, x, y = _regression()
    g, flat = _flat_fn(model, lambda p: ((functional_call(model, p, (x,)) - y) ** 2).sum() / len(y))
    H = hessian(g)(flat)  # (1/N) Σ_i Σ_d (f_id − y_id)²: the sum-reduced per-example loss, averaged
    if reduction == "mean":
        H = H / y.shape[1]  # MSELoss's mean also averages over the outputs
    for loss in (nn.MSELoss(reduction=reduction), "mse"):
        args = {"reduction": reduction} if loss == "mse" else None
        for bs in (None, 1, 7, 32):
            op = HessianOperator(model, loss, (x, y), batch_size=bs, loss_args=args)
            assert torch.allclose(op.to_dense(), H, atol=1e-10), (loss, bs)
    # a plain function returning a sum says so with reduction="sum"
    op = HessianOperator(model, lambda o, t: ((o - t) ** 2).sum(), (x, y), batch_size=5,
                         reduction="sum")
    assert torch.allclose(op.to_dense(), H * (y.shape[1] if reduction == "mean" else 1), atol=1e-10)


def test_sample_weights_and_label_smoothing():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(17, 5, dtype=torch.float64), torch.randint(0, 3, (17,))
    w = torch.rand(17, dtype=torch.float64) * 2
    ls = nn.functional.cross_entropy
    g, flat = _flat_fn(model, lambda p: (w * ls(functional_call(model, p, (x,)), y, reduction="none",
                                                label_smoothing=0.1)).sum() / len(y))
    H = hessian(g)(flat)
    op = HessianOperator(model, "cross_entropy", (x, y, w), batch_size=6, loss_args={"label_smoothing": 0.1})
    assert torch.allclose(op.to_dense(), H, atol=1e-10)
    # a callable gets the extra field as a further argument
    op2 = HessianOperator(model, lambda o, t, wt: (wt * ls(o, t, reduction="none", label_smoothing=0.1)).mean(),
                          (x, y, w), batch_size=4)
    assert torch.allclose(op2.to_dense(), H, atol=1e-10)


class DictNet(nn.Module):
    """A transformer-style interface: forward(input_ids, attention_mask) → logits."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, input_ids, attention_mask):
        h = self.norm(self.emb(input_ids)) * attention_mask.unsqueeze(-1)
        return self.head(h.sum(1) / attention_mask.sum(1, keepdim=True))


def test_dict_batches_as_a_list_with_uneven_sizes():
    torch.manual_seed(2)
    model = DictNet().double()
    ids, mask = torch.randint(0, 11, (13, 5)), (torch.rand(13, 5) > 0.3).double()
    mask[:, 0] = 1
    labels = torch.randint(0, 3, (13,))
    batches = [{"input_ids": ids[a:b], "attention_mask": mask[a:b], "labels": labels[a:b]}
               for a, b in ((0, 6), (6, 11), (11, 13))]
    g, flat = _flat_fn(model, lambda p: nn.functional.cross_entropy(
        functional_call(model, p, (ids, mask)), labels))
    H = hessian(g)(flat)
    op = HessianOperator(model, None, batches)
    assert torch.allclose(op.to_dense(), H, atol=1e-10)
    # and as a DataLoader over a Dataset of dict examples
    class Ds(Dataset):
        def __len__(self):
            return 13

        def __getitem__(self, i):
            return {"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]}

    op = HessianOperator(model, None, DataLoader(Ds(), batch_size=5))
    assert torch.allclose(op.to_dense(), H, atol=1e-10)
    obj = Objective(model, None, batches)
    loss, acc = obj.evaluate()
    assert abs(loss - float(g(flat))) < 1e-12 and 0 <= acc <= 1


class TwoInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(2, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x1, x2):
        return self.out(torch.tanh(self.a(x1) + self.b(x2)))


def test_two_input_model_by_structure_and_by_batch_fn():
    torch.manual_seed(3)
    model = TwoInput().double()
    x1, x2 = torch.randn(11, 3, dtype=torch.float64), torch.randn(11, 2, dtype=torch.float64)
    y = torch.randint(0, 2, (11,))
    g, flat = _flat_fn(model, lambda p: nn.functional.cross_entropy(functional_call(model, p, (x1, x2)), y))
    H = hessian(g)(flat)
    assert torch.allclose(HessianOperator(model, None, ((x1, x2), y), batch_size=4).to_dense(), H, atol=1e-10)
    op = HessianOperator(model, None, TensorDataset(x1, x2, y), batch_size=3,
                         batch_fn=lambda b: ((b[0], b[1]), b[2]))
    assert torch.allclose(op.to_dense(), H, atol=1e-10)
    r = eps_sharpness(model, None, ((x1, x2), y), eps=1e-3, max_iter=3)
    assert r.value >= 0 and r.n_samples == 11


def test_forward_fn_and_logits_outputs():
    torch.manual_seed(4)
    inner = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()

    class HF(nn.Module):  # a Hugging Face-style model: returns an object with .logits
        def __init__(self):
            super().__init__()
            self.net = inner

        def forward(self, x):
            return type("Out", (), {"logits": self.net(x)})()

    x, y = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 2, (9,))
    H = HessianOperator(inner, None, (x, y)).to_dense()
    assert torch.allclose(HessianOperator(HF(), None, (x, y)).to_dense(), H, atol=1e-12)
    op = HessianOperator(inner, None, ({"feats": x}, y), forward_fn=lambda m, inp: m(inp["feats"]))
    assert torch.allclose(op.to_dense(), H, atol=1e-12)


def test_operator_rebuilds_its_graph_when_weights_change():
    model, x, y = _regression(n=12)
    op = HessianOperator(model, "mse", (x, y))  # one batch: the gradient graph is kept
    v = torch.randn(op.num_params, dtype=torch.float64)
    op.matvec(v)
    with torch.no_grad():
        model[0].bias.add_(0.5)          # in place: the version counter moves
        model[2].weight.mul_(1.3)        # a weight the kept graph saved for backward
    fresh = HessianOperator(model, "mse", (x, y))
    assert torch.allclose(op.matvec(v), fresh.matvec(v), atol=1e-12)
    with torch.no_grad():
        model[0].weight.copy_(torch.randn_like(model[0].weight))
    assert torch.allclose(op.matvec(v), HessianOperator(model, "mse", (x, y)).matvec(v), atol=1e-12)


def test_train_mode_dropout_is_a_fixed_function_of_theta():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).double().eval()
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    snap = snapshot(model)
    op = HessianOperator(model, None, (x, y), mode="train", batch_size=16, seed=7)
    v = torch.randn(op.num_params, dtype=torch.float64)
    a, b = op.matvec(v), op.matvec(v)
    assert torch.equal(a, b)  # same masks every product
    H = op.to_dense()
    assert torch.allclose(H, H.T, atol=1e-10)
    other = HessianOperator(model, None, (x, y), mode="train", batch_size=16, seed=8).matvec(v)
    assert not torch.allclose(a, other)  # another seed, other masks: the seed matters and is recorded
    assert_unchanged(model, snap)
    ev = HessianOperator(model, None, (x, y)).matvec(v)
    assert not torch.allclose(a, ev)


def test_attention_double_backward_on_cpu():
    torch.manual_seed(6)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0,
                                       batch_first=True).double().eval()
    model = nn.Sequential(layer, nn.Flatten(), nn.Linear(8 * 3, 2)).double().eval()
    x, y = torch.randn(7, 3, 8, dtype=torch.float64), torch.randint(0, 2, (7,))
    op = HessianOperator(model, None, (x, y), batch_size=3)
    Hop = op.to_dense()
    g, flat = _flat_fn(model, lambda p: nn.functional.cross_entropy(functional_call(model, p, (x,)), y))
    with sdpa_kernel([SDPBackend.MATH]):
        H = torch.autograd.functional.hessian(g, flat)
    assert torch.allclose(Hop, H, atol=1e-9)


class Counting(Dataset):
    """A map-style Dataset that counts how often its items are read."""

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], self.y[i]


def test_streamed_equals_cached_and_loaders_are_read_every_pass():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x, y = torch.randn(50, 5, dtype=torch.float64), torch.randint(0, 3, (50,))
    cached = HessianOperator(model, None, (x, y), batch_size=8)
    streamed = HessianOperator(model, None, (x, y), batch_size=8, cache_bytes=100)  # far below the data's size
    assert cached.objective.data.cached and not streamed.objective.data.cached
    a = hessian_eigenvalues(cached, k=3, tol=1e-10, seed=0)
    b = hessian_eigenvalues(streamed, k=3, tol=1e-10, seed=0)
    assert np.allclose(a.values, b.values, rtol=0, atol=1e-10)
    ds = Counting(x, y)
    loader = DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    op = HessianOperator(model, None, loader, graph_bytes=0)
    v = torch.randn(op.num_params, dtype=torch.float64)
    assert torch.allclose(op.matvec(v), cached.matvec(v), atol=1e-12)  # shuffled: same mean
    op.matvec(v)
    assert ds.reads == 100  # no graphs kept: iterated once per product, never frozen
    kept = HessianOperator(model, None, loader)  # all its graphs fit: one pass serves every product
    assert torch.allclose(kept.matvec(v), cached.matvec(v), atol=1e-12)
    kept.matvec(v)
    assert ds.reads == 150
    small = Counting(x, y)  # a Dataset (no loader) is read once and then cached
    op = HessianOperator(model, None, small, batch_size=20)
    op.matvec(v), op.matvec(v), op.matvec(v)
    assert small.reads == 50
    tight = Counting(x, y)  # unless it does not fit the budget
    op = HessianOperator(model, None, tight, batch_size=20, cache_bytes=10, graph_bytes=0)
    op.matvec(v), op.matvec(v)
    assert tight.reads == 100
    with pytest.warns(UserWarning, match="drop_last"):
        Batches(DataLoader(ds, batch_size=16, drop_last=True))


def test_noise_scale_and_landscape_on_dict_batches():
    torch.manual_seed(8)
    model = DictNet().double()
    ids, mask, labels = torch.randint(0, 11, (12, 4)), torch.ones(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))
    data = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    r = gradient_noise_scale(model, None, data)
    # per-example gradients by hand
    grads = []
    for i in range(12):
        model.zero_grad()
        nn.functional.cross_entropy(model(ids[i:i + 1], mask[i:i + 1]), labels[i:i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    G = torch.stack(grads)
    g2 = float(G.mean(0) @ G.mean(0))
    assert abs(r.grad_norm_sq - g2) < 1e-10 * max(1, g2)
    assert abs(r.trace_sigma - float((G ** 2).sum(1).mean() - g2)) < 1e-9
    s = surface(model, None, data, dims=1, steps=5, span=0.5)
    assert s.loss.shape == (5,) and np.isfinite(s.loss).all()


def test_accuracy_only_where_defined_and_bad_inputs():
    model, x, y = _regression(n=10)
    loss, acc = Objective(model, "mse", (x, y)).evaluate()
    assert acc is None and loss > 0
    assert make_loss("bce_with_logits").correct(torch.tensor([[2.0], [-1.0]]), torch.tensor([1.0, 1.0])) == 1
    with pytest.raises(SharpnessError, match="unknown argument"):
        make_loss("mse", {"label_smoothing": 0.1})
    with pytest.raises(SharpnessError, match="labels"):
        Objective(model, "mse", [{"x": x}]).evaluate()
    with pytest.raises(SharpnessError, match="first dimensions"):
        Objective(model, "mse", (x, y[:5]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (N, 1) outputs against (N,) targets: aligned, no broadcast warning
        m1 = nn.Linear(4, 1).double()
        Objective(m1, "mse", (x, y[:, 0])).evaluate()


def test_data_writes_are_noticed_too():
    model, x, y = _regression(n=12)
    op = HessianOperator(model, "mse", (x, y))
    v = torch.randn(op.num_params, dtype=torch.float64)
    op.matvec(v)
    model[0].weight.data.mul_(1.7)  # through .data: neither the version counter nor the storage moves
    assert torch.allclose(op.matvec(v), HessianOperator(model, "mse", (x, y)).matvec(v), atol=1e-12)


def test_class_weights_and_ignore_index_follow_pytorchs_mean_for_any_batching():
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    x, y = torch.randn(23, 5, dtype=torch.float64), torch.randint(0, 4, (23,))
    y[[2, 5, 6]] = -100  # ignored
    cw = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    for kw in ({"weight": cw}, {"weight": cw, "label_smoothing": 0.2}, {"ignore_index": -100}):
        g, flat = _flat_fn(model, lambda p: nn.functional.cross_entropy(functional_call(model, p, (x,)), y, **kw))
        H = hessian(g)(flat)
        want = float(g(flat))
        for loss in (nn.CrossEntropyLoss(**kw), "cross_entropy"):
            args = None if isinstance(loss, nn.Module) else kw
            for bs in (None, 1, 3, 7):  # batch 1 holds an ignored example alone: no NaN
                obj = Objective(model, loss, (x, y), batch_size=bs, loss_args=args)
                assert abs(obj.evaluate()[0] - want) < 1e-12, (kw, loss, bs)
                assert torch.allclose(HessianOperator(obj).to_dense(), H, atol=1e-10), (kw, loss, bs)


@pytest.mark.parametrize("name", ["mlp-bn-ce", "conv2d-ln-ce", "mlp-tanh-mse"])
def test_evaluate_many_vmapped_equals_one_at_a_time(name):
    # Points sharing a vmapped forward give what evaluate gives per point: uneven batches, BN (running
    # statistics), 4-D conv weights + LayerNorm, a loss without accuracy; 7 points in groups of 3.
    from cases import make_cases

    case = next(c for c in make_cases(23) if c.name == name)
    snap = snapshot(case.model)
    obj = Objective(case.model, case.loss_fn, (case.x, case.y), batch_size=10)
    thetas = obj.flat() + 0.3 * torch.randn(7, obj.num_params, dtype=torch.float64,
                                            generator=torch.Generator().manual_seed(1))
    one = [obj.evaluate(t) for t in thetas]
    many = obj.evaluate_many(thetas, per_forward=3)
    assert obj.points_per_forward() == 1  # CPU default: one point per forward
    for (l1, a1), (l2, a2) in zip(one, many):
        assert abs(l1 - l2) < 1e-12 * max(1.0, abs(l1)), (l1, l2)
        assert (a1 is None and a2 is None) or abs(a1 - a2) < 1e-12
    assert len({lo for lo, _ in many}) == 7  # distinct points, not one point repeated
    assert_unchanged(case.model, snap)
    for bad, match in ((dict(per_forward=0), "per_forward"), (dict(per_forward="2"), "per_forward"),
                       (dict(thetas=thetas[:, :-1]), "thetas must be"), (dict(thetas=thetas[0]), "thetas must be")):
        with pytest.raises(SharpnessError, match=match):
            obj.evaluate_many(**{"thetas": thetas, **bad})


def test_evaluate_many_in_train_mode_keeps_each_points_seeded_masks():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).double().eval()
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    obj = Objective(model, None, (x, y), mode="train", batch_size=16, seed=7)
    thetas = obj.flat() + 0.1 * torch.randn(4, obj.num_params, dtype=torch.float64)
    assert obj.evaluate_many(thetas, per_forward=4) == [obj.evaluate(t) for t in thetas]
    ev = Objective(model, None, (x, y), batch_size=16)
    assert obj.evaluate_many(thetas[:1])[0] != ev.evaluate(thetas[0])  # train mode is not eval mode


def test_evaluate_many_batches_attention_without_its_fused_kernels():
    # The inference fast path of TransformerEncoderLayer/MultiheadAttention and the fused SDPA kernels have
    # no vmap batching rule (vmap warned and ran them point by point); the plain path is used, same values.
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.0)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.enc(x).mean(1))

    torch.manual_seed(0)
    model = Net().double().eval()
    x, y = torch.randn(10, 4, 8, dtype=torch.float64), torch.randint(0, 3, (10,))
    obj = Objective(model, None, (x, y), batch_size=4)
    thetas = obj.flat() + 0.01 * torch.randn(3, obj.num_params, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        many = obj.evaluate_many(thetas, per_forward=3)
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    for (l1, a1), (l2, a2) in zip(many, [obj.evaluate(t) for t in thetas]):
        assert abs(l1 - l2) < 1e-12 and a1 == a2


def test_one_function_with_and_without_gradients_for_a_masked_transformer_encoder():
    # nn.TransformerEncoder's inference fast path (nested tensors, taken only without gradients) zeroes the
    # padded positions the plain path computes: evaluate() gave another loss than loss_at(grad=True) and the
    # Hessian at the same weights (1.261 vs 1.302 here). The objective never takes the fast path.
    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Linear(4, 8)
            self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 2)
            self.head = nn.Linear(8, 3)

        def forward(self, x, mask):
            return self.head(self.enc(self.emb(x), src_key_padding_mask=mask).mean(1))

    torch.manual_seed(0)
    model = Enc().double().eval()
    x, y = torch.randn(10, 5, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    mask = torch.zeros(10, 5, dtype=torch.bool)
    mask[::2, -2:] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the encoder's own note on nested tensors
        obj = Objective(model, None, {"x": x, "mask": mask, "labels": y}, batch_size=4)
        with_grad = obj.loss_at(grad=True)[0]
        assert abs(obj.evaluate()[0] - with_grad) < 1e-12
        thetas = obj.flat() + 0.05 * torch.randn(2, obj.num_params, dtype=torch.float64)
        many = obj.evaluate_many(thetas, per_forward=2)
        assert all(abs(a[0] - obj.evaluate(t)[0]) < 1e-12 for a, t in zip(many, thetas))
    assert torch.backends.mha.get_fastpath_enabled()


def test_block_lanczos_and_evaluate_many_on_dict_batches_with_a_sum_loss():
    # Embedding + LayerNorm on uneven dict batches, cross-entropy summed: block Lanczos against the dense
    # Hessian of the data mean, and several points per vmapped forward against one at a time.
    torch.manual_seed(2)
    model = DictNet().double()
    ids, mask = torch.randint(0, 11, (13, 5)), (torch.rand(13, 5) > 0.3).double()
    mask[:, 0] = 1
    labels = torch.randint(0, 3, (13,))
    batches = [{"input_ids": ids[a:b], "attention_mask": mask[a:b], "labels": labels[a:b]}
               for a, b in ((0, 6), (6, 11), (11, 13))]
    loss = nn.CrossEntropyLoss(reduction="sum")
    op = HessianOperator(model, loss, batches)
    ev = np.sort(torch.linalg.eigvalsh(op.to_dense()).numpy())
    r = hessian_eigenvalues(op, k=2, which="both", tol=1e-10, method="block-lanczos")
    assert r.converged and np.allclose(np.sort(r.values), np.r_[ev[:2], ev[-2:]], atol=1e-8)
    obj = Objective(model, loss, batches)
    thetas = obj.flat() + 0.1 * torch.randn(5, obj.num_params, dtype=torch.float64)
    for (l1, a1), (l2, a2) in zip(obj.evaluate_many(thetas, per_forward=2), [obj.evaluate(t) for t in thetas]):
        assert abs(l1 - l2) < 1e-12 and abs(a1 - a2) < 1e-12
