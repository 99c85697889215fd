"""Generated bad arguments for every public analyzer: one-line SharpnessError naming the argument, the model untouched.

Each case is (function, argument name, call): the call gets the bad value for that one argument, every other
argument valid. Bad values come from hypothesis strategies (NaN, ±inf, negatives, zero, huge integers, strings,
lists, None, booleans). Also: user data, losses and models that used to fail late with a traceback.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import sharpness as sh
from sharpness import SharpnessError
from sharpness.measures.pacbayes import pacbayes_flatness

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

NAN, INF = float("nan"), float("inf")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

torch.manual_seed(0)
X = torch.randn(12, 3)
Y = torch.randint(0, 3, (12,))
DATA = (X, Y)
MODEL = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3))
P = sum(p.numel() for p in MODEL.parameters())
OP = sh.HessianOperator(MODEL, "cross_entropy", DATA)


def _snapshot():
    return [t.detach().clone() for t in list(MODEL.parameters()) + list(MODEL.buffers())], \
        [m.training for m in MODEL.modules()]


def _unchanged(snap) -> bool:
    tensors, modes = snap
    now = list(MODEL.parameters()) + list(MODEL.buffers())
    return all(torch.equal(a, b) for a, b in zip(tensors, now)) and modes == [m.training for m in MODEL.modules()]


def _refused(call, name: str | None) -> str:
    """``call()`` raises a one-line SharpnessError (naming ``name``), and MODEL is as it was."""
    snap = _snapshot()
    try:
        result = call()
    except SharpnessError as e:
        msg = str(e)
        assert "\n" not in msg.strip(), f"not one line: {msg!r}"
        assert len(msg) < 1000, f"too long: {len(msg)} characters"
        if name is not None:
            assert name in msg, f"the message does not name {name!r}: {msg}"
        assert _unchanged(snap), "the caller's model changed"
        return msg
    except Exception as e:  # pragma: no cover - the defect this file is about
        pytest.fail(f"{type(e).__name__} instead of SharpnessError: {str(e)[:300]}")
    pytest.fail(f"bad value accepted (returned {str(result)[:200]})")


# --- bad values --------------------------------------------------------------------------------------------

NOT_NUMBERS = st.sampled_from(["x", "1", None, [1], {"a": 1}, (1, 2), b"1", object()])
NON_FINITE = st.sampled_from([NAN, INF, -INF])
HUGE_INTS = st.sampled_from([10**12, 10**30, 2**64, 2**70])
NEGATIVE = st.one_of(st.integers(max_value=-1), st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False))


def bad_count(lo: int = 1, big: bool = True):
    """Not an integer ≥ lo (or absurdly large): strings, floats, NaN, booleans, too small, huge."""
    parts = [NOT_NUMBERS, NON_FINITE, st.integers(min_value=-10**6, max_value=lo - 1),
             st.floats(min_value=0.5, max_value=1e6).filter(lambda v: v != int(v)), st.just(True)]
    return st.one_of(*parts, HUGE_INTS) if big else st.one_of(*parts)


def bad_positive():
    """Not a finite number > 0."""
    return st.one_of(NOT_NUMBERS, NON_FINITE, NEGATIVE, st.just(0), st.just(0.0), st.just(True))


def bad_seed():
    return st.one_of(NOT_NUMBERS, NON_FINITE, st.integers(max_value=-1), st.just(2**64), st.just(10**30),
                     st.just(1.5), st.just(False))


def bad_choice():
    return st.one_of(NOT_NUMBERS, st.text(max_size=8).filter(lambda s: s not in ("eval", "train")), st.just(1))


# --- (function, argument) pairs ------------------------------------------------------------------------------

def _eig(**kw):
    return sh.hessian_eigenvalues(OP, progress=False, **{"max_hvps": 30, **kw})


def _trace(**kw):
    return sh.hessian_trace(OP, progress=False, **{"max_hvps": 20, **kw})


def _density(**kw):
    return sh.spectral_density(OP, progress=False, **{"steps": 4, "n_runs": 1, **kw})


def _eps(**kw):
    return sh.eps_sharpness(MODEL, "cross_entropy", DATA, **{"max_iter": 1, **kw})


def _adaptive(**kw):
    return sh.adaptive_sharpness(MODEL, "cross_entropy", DATA, **{"steps": 1, "n_samples": 8, **kw})


def _noise(**kw):
    return sh.gradient_noise_scale(MODEL, "cross_entropy", DATA, **{"batch_sizes": (2, 4), "n_batches": 2, **kw})


def _pac(**kw):
    return pacbayes_flatness(MODEL, "cross_entropy", DATA, **{"n_draws": 2, "iters": 2, **kw})


def _surface(**kw):
    return sh.surface(MODEL, "cross_entropy", DATA, progress=False, **{"dims": 1, "steps": 3, **kw})


def _interp(**kw):
    return sh.interpolate(MODEL, MODEL, "cross_entropy", {"train": DATA}, progress=False, **kw)


def _tracker(**kw):
    call = {k: kw.pop(k) for k in ("step",) if k in kw}
    t = sh.SharpnessTracker("cross_entropy", DATA, **{"every": 1, "max_hvps": 10, **kw})
    return t(MODEL, call.get("step", 1))


CASES = [
    # curvature
    (_eig, "k", bad_count(1)), (_eig, "tol", bad_positive()), (_eig, "max_hvps", bad_count(1)),
    (_eig, "seed", bad_seed()), (_eig, "which", bad_choice()), (_eig, "method", bad_choice()),
    (_eig, "max_basis", bad_count(4)), (_eig, "copies", st.sampled_from(["yes", 1, None])),
    (_trace, "rtol", st.one_of(NOT_NUMBERS, NON_FINITE, NEGATIVE)), (_trace, "max_hvps", bad_count(2)),
    (_trace, "block", bad_count(1)), (_trace, "min_samples", bad_count(1)), (_trace, "seed", bad_seed()),
    (_trace, "sketch_size", bad_count(1)), (_trace, "method", bad_choice()),
    (_density, "grid_size", bad_count(2)), (_density, "steps", bad_count(2)), (_density, "n_runs", bad_count(1)),
    (_density, "sigma", bad_positive()), (_density, "seed", bad_seed()),
    # measures
    (_eps, "eps", bad_positive()), (_eps, "subspace_dim", bad_count(1)), (_eps, "max_iter", bad_count(1)),
    (_eps, "seed", bad_seed()), (_eps, "max_samples", bad_count(1)), (_eps, "mode", bad_choice()),
    (_eps, "subspace_draw", bad_choice()),
    (_adaptive, "rho", bad_positive()), (_adaptive, "kind", bad_choice()), (_adaptive, "norm", bad_choice()),
    (_adaptive, "steps", bad_count(1)), (_adaptive, "n_samples", bad_count(1, big=False)),
    (_adaptive, "batch_size", bad_count(1, big=False)), (_adaptive, "seed", bad_seed()),
    (_adaptive, "adaptive", st.sampled_from(["no", 1, None, 0.0])),
    (_noise, "n_batches", bad_count(2)), (_noise, "chunk", bad_count(1)), (_noise, "seed", bad_seed()),
    (_noise, "batch_sizes", st.one_of(NOT_NUMBERS.filter(lambda v: v not in (None, (1, 2))),
                                      st.tuples(st.integers(-5, 0), st.integers(1, 5)),
                                      st.tuples(st.integers(3, 9), st.integers(0, 3)),
                                      st.tuples(st.just(2), HUGE_INTS), st.tuples(st.just(2.5), st.just(4)))),
    (_pac, "delta", bad_positive()), (_pac, "n_draws", bad_count(2)), (_pac, "iters", bad_count(1)),
    (_pac, "seed", bad_seed()), (_pac, "eps", st.one_of(NOT_NUMBERS, NON_FINITE, NEGATIVE)),
    (lambda **kw: sh.rescale_relu_layers(MODEL, **{"layer": 0, "alpha": 2.0, **kw}), "alpha",
     st.one_of(bad_positive(), st.just(1e300), st.just(1e-300))),
    (lambda **kw: sh.rescale_relu_layers(MODEL, **{"layer": 0, "alpha": 2.0, **kw}), "layer",
     st.one_of(NOT_NUMBERS, NON_FINITE, st.integers(max_value=-1), st.just(1.0), HUGE_INTS)),
    # landscape
    (lambda **kw: sh.random_directions(MODEL, **kw), "n", bad_count(1)),
    (lambda **kw: sh.random_directions(MODEL, **kw), "seed", bad_seed()),
    (lambda **kw: sh.random_directions(MODEL, **kw), "normalization", bad_choice()),
    (_surface, "steps", bad_count(2)), (_surface, "span", st.one_of(NOT_NUMBERS.filter(lambda v: v != (1, 2)),
                                                                    NON_FINITE, NEGATIVE, st.just(0))),
    (_surface, "dims", st.one_of(NOT_NUMBERS, st.integers().filter(lambda v: v not in (1, 2)))),
    (_surface, "seed", bad_seed()), (_surface, "points_per_forward", bad_count(1)),
    (_surface, "bn", bad_choice()), (_surface, "save_every", st.one_of(NOT_NUMBERS, NON_FINITE, NEGATIVE)),
    (_interp, "alphas", st.one_of(st.just([]), st.lists(NON_FINITE, min_size=1, max_size=3), st.just("x"),
                                  st.just([[0.5]]), st.just([0.5, "a"]), st.just({"a": 1}), st.just([1e300]))),
    (_interp, "path", bad_choice()), (_interp, "bn", bad_choice()), (_interp, "points_per_forward", bad_count(1)),
    # tracker
    (_tracker, "every", bad_count(1)), (_tracker, "k", bad_count(1)), (_tracker, "tol", bad_positive()),
    (_tracker, "max_hvps", bad_count(2)), (_tracker, "seed", bad_seed()), (_tracker, "mode", bad_choice()),
    (_tracker, "subset", bad_count(1, big=False)), (_tracker, "step", st.one_of(NOT_NUMBERS, NEGATIVE, HUGE_INTS)),
]


@FUZZ
@given(st.data())
def test_a_bad_argument_is_refused_in_one_line_naming_it(data):
    fn, name, values = data.draw(st.sampled_from(CASES), label="case")
    value = data.draw(values, label=name)
    _refused(lambda: fn(**{name: value}), name)


@pytest.mark.parametrize("fn,name,_", CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(CASES)])
def test_the_valid_default_of_each_case_still_runs(fn, name, _):
    if fn is _tracker and name == "step":
        return
    snap = _snapshot()
    fn()  # every case's other arguments are valid: the call with defaults succeeds
    assert _unchanged(snap)


# --- first arguments, operators, start vectors ----------------------------------------------------------------

FIRST = st.sampled_from([None, "model", 3, [1, 2], {"a": 1}, torch.ones(3), nn.Linear])


@FUZZ
@given(FIRST)
def test_a_first_argument_that_is_no_model_is_refused(v):
    for call in (lambda: sh.HessianOperator(v, "cross_entropy", DATA), lambda: sh.Objective(v, None, DATA),
                 lambda: sh.eps_sharpness(v, None, DATA), lambda: sh.surface(v, None, DATA, progress=False),
                 lambda: sh.random_directions(v), lambda: sh.rescale_relu_layers(v, 0, 2.0),
                 lambda: sh.interpolate(MODEL, v, None, {"t": DATA})):
        _refused(call, None)
    if not isinstance(v, torch.Tensor):
        _refused(lambda: sh.hessian_eigenvalues(v), None)
        _refused(lambda: sh.start_vector(v, 0), None)


@FUZZ
@given(st.one_of(st.sampled_from([None, "v", [1.0], 3.0]),
                 st.integers(1, 2 * P).filter(lambda n: n != P).map(lambda n: torch.randn(n)),
                 st.just(torch.zeros(P)), st.just(torch.full((P,), NAN)), st.just(torch.full((2, P), INF)),
                 st.just(torch.ones(P, dtype=torch.int64)), st.just(torch.randn(2, 2, P)),
                 st.just(torch.randn(P, dtype=torch.complex64))))
def test_a_bad_krylov_start_is_refused(v):
    _refused(lambda: sh.Krylov(OP, v), "starts")


def test_a_valid_krylov_start_runs():
    K = sh.Krylov(OP, torch.randn(2, P)).extend(3)
    assert K.runs == 2 and len(K) == 3


# --- user data, losses and models -----------------------------------------------------------------------------


class _Stream(IterableDataset):
    def __iter__(self):
        yield from zip(X, Y)


class _Huge(Dataset):
    def __len__(self):
        return 10**12

    def __getitem__(self, i):
        return X[i % 12], Y[i % 12]


class _Lying(Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return X[i], Y[i]  # IndexError past 12


def test_an_iterable_dataset_is_refused_in_one_line_and_works_in_a_loader():
    _refused(lambda: sh.HessianOperator(MODEL, "cross_entropy", _Stream()), "IterableDataset")
    loader = DataLoader(_Stream(), batch_size=5)
    a = sh.hessian_eigenvalues(sh.HessianOperator(MODEL, "cross_entropy", loader), progress=False).values[0]
    b = sh.hessian_eigenvalues(OP, progress=False).values[0]
    assert abs(a - b) <= 1e-4 * abs(b)


def test_a_dataset_declaring_an_absurd_length_is_refused_before_reading():
    _refused(lambda: sh.Batches(_Huge()), "10")
    _refused(lambda: sh.Batches(DataLoader(_Huge(), batch_size=4)), "10")


def test_a_dataset_that_fails_while_read_is_one_line():
    _refused(lambda: sh.eps_sharpness(MODEL, "cross_entropy", _Lying(), max_iter=1), "_Lying")


@pytest.mark.parametrize("loss", [
    lambda o, t: nn.functional.cross_entropy(o, t).detach(),
    lambda o, t: torch.tensor(float(nn.functional.cross_entropy(o, t))),
])
def test_a_detached_loss_says_it_does_not_depend_on_the_parameters(loss):
    for call in (lambda: sh.hessian_eigenvalues(sh.HessianOperator(MODEL, loss, DATA), progress=False),
                 lambda: sh.eps_sharpness(MODEL, loss, DATA, max_iter=1),
                 lambda: sh.adaptive_sharpness(MODEL, loss, DATA, steps=1, n_samples=8)):
        assert "does not depend on the parameters" in _refused(call, None)


@pytest.mark.parametrize("loss", [
    lambda o, t: nn.functional.cross_entropy(o, t).to(torch.complex64),
    lambda o, t: (o.sum() * 0).long(),
])
def test_a_complex_or_integer_loss_is_one_line(loss):
    _refused(lambda: sh.hessian_eigenvalues(sh.HessianOperator(MODEL, loss, DATA), progress=False), "loss")
    _refused(lambda: sh.Objective(MODEL, loss, DATA).evaluate(), "loss")


@FUZZ
@given(st.lists(st.sampled_from([0.0, -1.0, -0.5]), min_size=3, max_size=3))
def test_class_weights_that_sum_to_nothing_are_refused(w):
    _refused(lambda: sh.Objective(MODEL, "cross_entropy", DATA, loss_args={"weight": w}), "weight")


def test_weights_zero_on_every_class_present_are_one_line():
    y = torch.zeros(12, dtype=torch.long)  # only class 0, whose weight is 0
    obj = sh.Objective(MODEL, "cross_entropy", (X, y), loss_args={"weight": [0.0, 1.0, 1.0]})
    _refused(obj.evaluate, "denominator")
    _refused(lambda: sh.HessianOperator(obj).matvec(torch.ones(P)), "denominator")


def test_test_data_of_another_shape_name_the_data_set():
    msg = _refused(lambda: sh.interpolate(MODEL, copy.deepcopy(MODEL), "cross_entropy",
                                          {"train": DATA, "test": (torch.randn(5, 7), Y[:5])}), "test")
    assert "the model" in msg
    obj = sh.Objective(MODEL, "cross_entropy", (torch.randn(5, 7), Y[:5]), name="test data")
    assert "test data" in _refused(obj.evaluate, None)
    bad_targets = sh.Objective(MODEL, "cross_entropy", (X, torch.full((12,), 7)), name="test data")
    assert "test data" in _refused(bad_targets.evaluate, None)


class _Extra(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(3, 3)

    def forward(self, x):
        return self.l(x)

    def get_extra_state(self):
        return {"note": "kept", "t": torch.ones(2)}

    def set_extra_state(self, state):
        self.extra = state


def test_a_model_with_extra_state_is_analyzed_and_left_as_it_was():
    m = _Extra()
    before = copy.deepcopy(m.state_dict())
    op = sh.HessianOperator(m, "cross_entropy", DATA, mode="train")
    assert math.isfinite(sh.hessian_eigenvalues(op, progress=False).values[0])
    assert math.isfinite(sh.eps_sharpness(m, "cross_entropy", DATA, max_iter=1).value)
    assert sh.SharpnessTracker("cross_entropy", DATA, every=1, max_hvps=10)(m, 1) is not None
    after = m.state_dict()
    assert after["_extra_state"]["note"] == "kept" and torch.equal(after["_extra_state"]["t"], torch.ones(2))
    assert all(torch.equal(before[k], after[k]) for k in before if k != "_extra_state")


@pytest.mark.parametrize("state", [None, [], {"history": "x"}, {"history": [{"step": "1"}]},
                                   {"history": [], "vectors": "v"}, {"history": [], "vectors": torch.full((1, 3), NAN)},
                                   {"history": [], "vectors": torch.ones(3)}])
def test_a_tampered_tracker_state_is_refused(state):
    t = sh.SharpnessTracker("cross_entropy", DATA)
    _refused(lambda: t.load_state_dict(state), "tracker state")


def test_a_tracker_state_round_trips():
    t = sh.SharpnessTracker("cross_entropy", DATA, every=1, max_hvps=10)
    t(MODEL, 1)
    u = sh.SharpnessTracker("cross_entropy", DATA, every=1, max_hvps=10)
    u.load_state_dict(t.state_dict())
    assert u.history == t.history


_ANALYZERS = {
    "eigenvalues": lambda net, d: sh.hessian_eigenvalues(sh.HessianOperator(net, "cross_entropy", d), k=1),
    "trace": lambda net, d: sh.hessian_trace(sh.HessianOperator(net, "cross_entropy", d), max_hvps=50),
    "evaluate": lambda net, d: sh.Objective(net, "cross_entropy", d).evaluate(),
    "eps_sharpness": lambda net, d: sh.eps_sharpness(net, "cross_entropy", d, max_iter=2),
    "noise_scale": lambda net, d: sh.gradient_noise_scale(net, "cross_entropy", d),
    "surface": lambda net, d: sh.surface(net, "cross_entropy", d, dims=1, steps=3),
    "tracker": lambda net, d: sh.SharpnessTracker("cross_entropy", d, every=1)(net, 0),
}

@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(sorted(_ANALYZERS)), where=st.sampled_from(["x", "y"]),
       value=st.sampled_from([math.nan, math.inf, -math.inf]), index=st.integers(0, 23),
       form=st.sampled_from(["tensors", "dataset", "loader", "batches", "dict"]))
def test_nan_or_inf_in_data_in_memory_is_bad_data_in_every_analyzer(name, where, value, index, form):
    # Not a NaN result, not a LAPACK failure: the data are said to be bad, naming where.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(24, 4), torch.arange(24.0).remainder(3).unsqueeze(1).expand(24, 3).contiguous()
    y = torch.softmax(y, 1)  # probabilities: real targets cross-entropy takes, so NaN can sit in them too
    (x if where == "x" else y)[index, 1] = value
    data = {"tensors": (x, y), "dataset": TensorDataset(x, y),
            "loader": DataLoader(TensorDataset(x, y), batch_size=8),
            "batches": [(x[:10], y[:10]), (x[10:], y[10:])], "dict": {"input": x, "target": y}}[form]
    kw = {}
    if form == "dict":
        kw = {"batch_fn": lambda b: (b["input"], b["target"], {})}
        data = [data]
    with pytest.raises(SharpnessError) as e:
        if kw:
            sh.hessian_eigenvalues(sh.HessianOperator(sh.Objective(net, "cross_entropy", data, **kw)), k=1)
        else:
            _ANALYZERS[name](net, data)
    text = str(e.value)
    assert "NaN or Inf" in text and "bad data" in text and "\n" not in text, text


@pytest.mark.parametrize("bad", ["zero", "nan"])
def test_zero_or_nonfinite_surface_directions_are_refused(bad):
    net = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(16, 4), torch.arange(16) % 3
    P = sum(p.numel() for p in net.parameters())
    d = torch.randn(2, P)
    d[1] = 0.0 if bad == "zero" else math.nan
    with pytest.raises(SharpnessError, match="nonzero" if bad == "zero" else "NaN or Inf"):
        sh.surface(net, "cross_entropy", (x, y), directions=d, steps=3)


def test_an_additive_mask_with_minus_inf_in_a_dict_batch_is_data_not_a_defect():
    # nn.Transformer-style float masks hold -inf: not bad data; a NaN there still is.
    net = nn.Sequential(nn.Linear(4, 3))
    x, y = torch.randn(8, 4), torch.arange(8) % 3
    mask = torch.zeros(8, 4)
    mask[:, 3] = -math.inf
    fn = {"batch_fn": lambda b: (b["x"] + b["attn_mask"].clamp(min=0), b["y"], {})}
    sh.Objective(net, "cross_entropy", [{"x": x, "y": y, "attn_mask": mask}], **fn).evaluate()
    mask[0, 0] = math.nan
    with pytest.raises(SharpnessError, match="NaN or Inf"):
        sh.Objective(net, "cross_entropy", [{"x": x, "y": y, "attn_mask": mask}], **fn).evaluate()
