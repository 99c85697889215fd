import importlib
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from helpers import user_module
from sharpness import DataSpec, SharpnessError, load_data
from sharpness.data import DATASETS, dataset_names, input_shape, num_classes, register_data
from sharpness.specs import trust_code


def test_mnist1d_default_split_and_determinism():
    state = np.random.get_state()
    train, test = load_data("mnist1d")
    assert (len(train), len(test)) == (4000, 1000)
    assert input_shape(train) == (40,) and num_classes(train, test) == 10
    # mnist1d reseeds numpy's global RNG internally; the caller's state must survive.
    assert np.array_equal(np.random.get_state()[1], state[1])
    again, _ = load_data(DataSpec("mnist1d", {}))  # second load comes from the cache
    assert torch.equal(train.tensors[0], again.tensors[0]) and torch.equal(train.tensors[1], again.tensors[1])
    assert train.tensors[0].dtype == torch.float32 and train.tensors[1].dtype == torch.int64


def test_mnist1d_size_is_configurable():
    train, test = load_data("mnist1d", num_samples=1000)
    assert (len(train), len(test)) == (800, 200)


def test_digits_split_is_fixed_and_covers_all():
    a, b = load_data("digits")
    a2, b2 = load_data("digits")
    assert len(a) + len(b) == 1797 and len(b) == 359
    assert torch.equal(a.tensors[0], a2.tensors[0])
    assert input_shape(a) == (1, 8, 8) and float(a.tensors[0].max()) <= 1.0


def test_gaussian_seeded():
    a, _ = load_data("gaussian", n_train=50, seed=3)
    b, _ = load_data("gaussian", n_train=50, seed=3)
    c, _ = load_data("gaussian", n_train=50, seed=4)
    assert torch.equal(a.tensors[0], b.tensors[0]) and not torch.equal(a.tensors[0], c.tensors[0])


def test_unknown_and_bad_args():
    with pytest.raises(SharpnessError, match="unknown data set 'nope'"):
        load_data("nope")
    with pytest.raises(SharpnessError, match="bad arguments"):
        load_data("gaussian", wrong=1)


def test_local_sets_need_a_folder(tmp_path):
    with pytest.raises(SharpnessError, match="root="):
        load_data("mnist")
    with pytest.raises(SharpnessError, match="does not exist"):
        load_data("cifar10", root=str(tmp_path / "missing"))
    with pytest.raises(SharpnessError, match="not found"):
        load_data("fashion-mnist", root=str(tmp_path))


def _idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    path.write_bytes(header + arr.tobytes())


def test_mnist_read_from_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs, labels = rng.integers(0, 256, (6, 28, 28)), np.arange(6) % 10
    for split in ("train", "t10k"):
        _idx(raw / f"{split}-images-idx3-ubyte", imgs)
        _idx(raw / f"{split}-labels-idx1-ubyte", labels)
    train, test = load_data("mnist", root=str(tmp_path))
    assert input_shape(train) == (1, 28, 28) and len(test) == 6
    assert torch.allclose(train.tensors[0][2, 0], torch.tensor(imgs[2] / 255.0, dtype=torch.float32))
    assert train.tensors[1].tolist() == labels.tolist()


def _cifar_folder(root, first_batch=None):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 10}, f, protocol=2)
    if first_batch is not None:
        with open(folder / "data_batch_1", "wb") as f:
            pickle.dump(first_batch, f, protocol=2)
    return folder


def test_cifar10_read_from_torchvision_layout(tmp_path):
    _cifar_folder(tmp_path)
    train, test = load_data("cifar10", root=str(tmp_path))
    assert (len(train), len(test)) == (50, 10) and input_shape(train) == (3, 32, 32)
    assert train.tensors[0].dtype == torch.float32 and num_classes(train, test) == 1


class Payload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_cifar10_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "MARKER"
    _cifar_folder(tmp_path, {b"data": Payload(f"touch {marker}"), b"labels": [0] * 10})
    with pytest.raises(SharpnessError, match=r"data_batch_1' refused: it would import (posix|os|nt)\.system"):
        load_data("cifar10", root=str(tmp_path))
    assert not marker.exists()


@pytest.mark.parametrize("content,message", [
    (b"not a pickle at all", "is not a CIFAR-10 batch"),
    (pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 0]}, protocol=2), "uint8 N×3072"),
    (pickle.dumps({b"data": np.zeros((1, 3072), dtype=object), b"labels": [0]}, protocol=2),
     "is not a CIFAR-10 batch .UnpicklingError: an object dtype"),
    (pickle.dumps({b"data": b"x"}, protocol=4), "is not a CIFAR-10 batch"),
])
def test_cifar10_foreign_batch(tmp_path, content, message):
    folder = _cifar_folder(tmp_path)
    (folder / "test_batch").write_bytes(content)
    with pytest.raises(SharpnessError, match=message):
        load_data("cifar10", root=str(tmp_path))


USER_DATA = """
import torch
from torch.utils.data import DataLoader, Dataset


def tensors(n=20):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, generator=g), torch.randint(0, 4, (n,), generator=g)
    return (x, y), (x[:5], y[:5])


class Squares(Dataset):
    def __init__(self, n, regression=False):
        self.n, self.regression = n, regression

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = torch.full((2, 3), float(i))
        return x, (float(i) ** 2 if self.regression else i % 3)


def dataset(n=9):
    return Squares(n), Squares(4)


def loaders():
    return DataLoader(Squares(8), batch_size=4), DataLoader(Squares(4, regression=True), batch_size=4)


def no_test():
    return Squares(3), None


def bad():
    return [1, 2, 3]


def bad_pair():
    return (torch.zeros(3), [1, 2]), Squares(2)


def fails(n=3):
    raise ValueError(f"n={n} is too small")


def misaligned():
    return (torch.zeros(3, 2), torch.zeros(4)), Squares(2)
"""


@pytest.fixture
def user_data(tmp_path, monkeypatch):
    return user_module(tmp_path, monkeypatch, "data_userdata", USER_DATA)


def test_user_data_functions(user_data):
    train, test = load_data(f"{user_data}:tensors", n=12)
    assert isinstance(train, TensorDataset) and len(train) == 12 and len(test) == 5
    assert input_shape(train) == (3,) and num_classes(train, test) <= 4
    train, test = load_data(DataSpec(f"{user_data}:dataset", {"n": 7}), trusted=False)  # the user's own code
    assert type(train).__name__ == "Squares" and len(train) == 7
    assert input_shape(train) == (2, 3) and num_classes(train, test) == 3
    train, test = load_data(f"{user_data}:loaders")
    assert isinstance(train, DataLoader) and isinstance(test, DataLoader)
    assert input_shape(train) == (2, 3) and num_classes(train) == 3
    assert num_classes(test) is None and num_classes(train, test) is None  # float targets: regression
    train, test = load_data(f"{user_data}:no_test")
    assert test is None and len(train) == 3


@pytest.mark.parametrize("fn,message", [
    ("bad", r"data function '\w+:bad' returned list\(int, int, int\); expected \(train, test\)"),
    ("bad_pair", r"returned tuple\(tuple\(Tensor, list\(int, int\)\), Squares\)"),
    ("misaligned", r"returned X and y of shapes \(3, 2\) and \(4,\)"),
    ("fails", r"data function '\w+:fails' failed: ValueError: n=3 is too small$"),
])
def test_user_data_function_returning_something_else(user_data, fn, message):
    with pytest.raises(SharpnessError, match=message):
        load_data(f"{user_data}:{fn}")
    with pytest.raises(SharpnessError, match=f"bad arguments for data set '{user_data}:tensors'"):
        load_data(f"{user_data}:tensors", size=3)


def test_data_names_from_a_checkpoint_follow_the_import_policy(user_data):
    for name in ("os:getcwd", "torch.hub:load", "subprocess:run"):
        with pytest.raises(SharpnessError, match=f"refused: data set '{name}'.*--data {name} / data="):
            load_data(name, trusted=False)
    # the user's own module: not imported on a file's say-so; allowed once opted in or imported by their code
    with pytest.raises(SharpnessError, match="not imported on the file's say-so.*--trust-code"):
        load_data(f"{user_data}:tensors", trusted=False)
    with trust_code():
        assert len(load_data(f"{user_data}:tensors", trusted=False)[0]) == 20
    importlib.import_module(user_data)
    assert len(load_data(f"{user_data}:tensors", trusted=False)[0]) == 20


def test_register_data(monkeypatch):
    monkeypatch.setattr(DATASETS, "_fns", dict(DATASETS._fns))  # registrations vanish after the test

    @register_data("ramp")
    def ramp(n=4):
        x = torch.arange(float(n)).reshape(n, 1)
        return (x, x * 2), (x, x * 2)

    assert "ramp" in dataset_names() and "mnist1d" in dataset_names()
    train, _ = load_data("ramp", n=6, trusted=False)  # a registered name needs no import
    assert len(train) == 6 and num_classes(train) is None


class Pairs(Dataset):
    """A generic map-style data set with numpy inputs and integer labels, and a torchvision-like one."""

    def __init__(self, n, with_targets=False):
        self.n = n
        if with_targets:
            self.targets = [i % 5 for i in range(n)]
            self.target_transform = None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if hasattr(self, "targets"):
            raise AssertionError("num_classes should read the targets list, not every example")
        return np.zeros((4, 2), np.float32), i % 7


class OnlyInputs(Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(5)


def test_input_shape_and_num_classes_on_any_dataset():
    assert input_shape(Pairs(10)) == (4, 2) and num_classes(Pairs(10)) == 7 and num_classes(Pairs(3)) == 3
    assert num_classes(Pairs(10, with_targets=True)) == 5
    assert input_shape(DataLoader(Pairs(10), batch_size=3)) == (4, 2)
    assert num_classes(DataLoader(Pairs(10), batch_size=3, shuffle=True)) == 7
    assert input_shape(OnlyInputs()) == (5,) and num_classes(OnlyInputs()) is None
    reg = TensorDataset(torch.randn(6, 3), torch.randn(6))
    assert input_shape(reg) == (3,) and num_classes(reg) is None
    assert num_classes(TensorDataset(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1])),
                       TensorDataset(torch.randn(2, 3), torch.tensor([2, 0]))) == 3
    with pytest.raises(SharpnessError, match="is empty"):
        input_shape(Pairs(0))


# --- The data root a checkpoint may read ($SHARPNESS_DATA) -------------------------------------------------


def _mnist_folder(root):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        _idx(raw / f"{split}-images-idx3-ubyte", np.zeros((4, 28, 28)))
        _idx(raw / f"{split}-labels-idx1-ubyte", np.arange(4))
    return root


def _checkpoint(path, name, root):
    from sharpness.checkpoint import save_checkpoint

    net = torch.nn.Linear(3, 2)
    return save_checkpoint(path, model=net, model_spec=DataSpec("mlp", {}), data_spec=DataSpec(name, {"root": root}))


@pytest.mark.parametrize("name,make", [("mnist", _mnist_folder), ("cifar10", _cifar_folder)])
def test_a_checkpoints_data_root_must_lie_in_sharpness_data(tmp_path, monkeypatch, name, make):
    from sharpness import load_checkpoint

    data = tmp_path / "data"
    folder = data / "sets"
    make(folder)
    path = _checkpoint(tmp_path / "c.pt", name, str(folder))
    monkeypatch.delenv("SHARPNESS_DATA", raising=False)
    with pytest.raises(SharpnessError) as info:
        load_checkpoint(path).datasets()
    assert str(info.value) == (f"{path}: data set '{name}': the checkpoint's data root '{folder}' is outside "
                               "$SHARPNESS_DATA (unset); pass --data-arg root=PATH (or data_args={'root': ...}) "
                               "to read it")
    # The same spec given by the user, or its root, is read wherever it is.
    assert len(load_data(DataSpec(name, {"root": str(folder)}))[1]) > 0
    assert len(load_data(DataSpec(name, {"root": str(folder)}), trusted=False, root=str(folder))[1]) > 0
    assert len(load_checkpoint(path, data_args={"root": str(folder)}).datasets()[1]) > 0
    assert len(load_checkpoint(path, data=name, data_args={"root": str(folder)}).datasets()[1]) > 0
    with pytest.raises(SharpnessError, match="outside"):  # the name is the user's; the root still the file's
        load_checkpoint(path, data=name).datasets()
    with pytest.raises(SharpnessError, match=f"^data set '{name}': the checkpoint's data root"):
        load_data(DataSpec(name, {"root": str(folder)}), trusted=False)

    # Inside $SHARPNESS_DATA (the folder itself or above it): read.
    for allowed in (data, folder):
        monkeypatch.setenv("SHARPNESS_DATA", str(allowed))
        assert len(load_checkpoint(path).datasets()[1]) > 0
    # Elsewhere, by way of '..' or of a symbolic link: refused, the resolved folder named.
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("SHARPNESS_DATA", str(other))
    with pytest.raises(SharpnessError, match=f"outside \\$SHARPNESS_DATA \\('{other}'\\)"):
        load_checkpoint(path).datasets()
    escape = f"{other}/../data/sets"
    with pytest.raises(SharpnessError, match=f"data root '{escape}' \\(resolves to '{folder}'\\) is outside"):
        load_checkpoint(_checkpoint(tmp_path / "d.pt", name, escape)).datasets()
    os.symlink(folder, other / "link")
    with pytest.raises(SharpnessError, match=f"data root '{other / 'link'}' \\(resolves to '{folder}'\\) is outside"):
        load_checkpoint(_checkpoint(tmp_path / "e.pt", name, str(other / "link"))).datasets()
    monkeypatch.setenv("SHARPNESS_DATA", str(data))
    os.symlink("/etc", data / "etc")
    with pytest.raises(SharpnessError, match="resolves to '/etc'"):
        load_checkpoint(_checkpoint(tmp_path / "f.pt", name, str(data / "etc"))).datasets()
    with pytest.raises(SharpnessError, match="data root 5 is not a path"):
        load_checkpoint(_checkpoint(tmp_path / "g.pt", name, 5)).datasets()


def test_a_user_data_function_with_a_root_follows_the_same_policy(user_data, tmp_path, monkeypatch):
    monkeypatch.setattr(DATASETS, "_fns", dict(DATASETS._fns))
    register_data("rooted", lambda root=None: ((torch.zeros(2, 1), torch.zeros(2).long()), None))
    monkeypatch.delenv("SHARPNESS_DATA", raising=False)
    with pytest.raises(SharpnessError, match="data set 'rooted': the checkpoint's data root"):
        load_data(DataSpec("rooted", {"root": str(tmp_path)}), trusted=False)
    assert len(load_data(DataSpec("rooted", {"root": None}), trusted=False)[0]) == 2  # no folder named
    assert len(load_data(DataSpec("rooted", {"root": str(tmp_path)}))[0]) == 2


# --- Arguments checked before anything is generated or read ----------------------------------------------


@pytest.mark.parametrize("args,message", [
    ({"num_samples": -5}, r"data set 'mnist1d': num_samples must be an integer in \[10, 10000000\] .* \(got -5\)$"),
    ({"num_samples": 1000.0}, r"num_samples must be an integer in \[10, 10000000\] .*\(got 1000.0\)"),
    ({"num_samples": 10**8}, r"num_samples must be an integer in \[10, 10000000\] .*\(got 100000000\)"),
    ({"final_seq_length": 10**9}, r"final_seq_length must be an integer in \[1, 100000\] \(got 1000000000\)"),
    ({"template_len": 0}, r"template_len must be an integer in \[1, 100000\] \(got 0\)"),
    ({"max_translation": 10**6}, r"max_translation must be an integer in \[1, 100000\]"),
    ({"padding": [5, 2]}, r"padding must be \[low, high\] with 0 ≤ low ≤ high ≤ 100000 \(got \[5, 2\]\)"),
    ({"padding": [0, 10**6]}, r"padding must be \[low, high\]"),
    ({"num_samples": 10**7, "final_seq_length": 10**5},
     r"num_samples=10000000 examples of 100000 values would make 1e\+12 values \(at most 1e\+09\)"),
    ({"num_samples": True}, r"num_samples must be an integer"),
    ({"train_split": 0}, r"train_split must be a number in \(0, 1\) \(got 0\)"),
    ({"train_split": 1.0}, r"train_split must be a number in \(0, 1\)"),
    ({"train_split": float("nan")}, r"train_split must be a number in \(0, 1\) \(got nan\)"),
    ({"num_samples": 10, "train_split": 0.05}, r"num_samples=10 with train_split=0.05 leaves the train set empty"),
    ({"seed": -1}, r"seed must be an integer in \[0, 4294967295\]"),
    ({"foo": 1}, r"bad arguments for data set 'mnist1d': unknown argument 'foo'; accepted: num_samples, "
                 r"train_split, seed, template_len, padding, .*final_seq_length, url$"),
    ({"padding": [1, 2, 3]}, r"padding must be like its default \[36, 60\] \(got \[1, 2, 3\]\)"),
    ({"shuffle_seq": 1}, r"shuffle_seq must be like its default False"),
    ({"scale_coeff": "big"}, r"scale_coeff must be like its default 0.4"),
    ({"template_len": 12.5}, r"template_len must be like its default 12"),
    ({"n_train": 5}, r"unknown argument 'n_train'"),
])
def test_mnist1d_arguments_are_checked(args, message):
    with pytest.raises(SharpnessError, match=message) as info:
        load_data("mnist1d", **args)
    assert "\n" not in str(info.value)


def test_mnist1d_generator_arguments_are_passed_on():
    a, b = load_data("mnist1d", num_samples=100, shuffle_seq=True, iid_noise_scale=0.05)
    assert (len(a), len(b)) == (80, 20) and input_shape(a) == (40,)


@pytest.mark.parametrize("args,message", [
    ({"n_train": 0}, r"data set 'gaussian': n_train must be an integer in \[1, 10000000\] .got 0."),
    ({"n_test": -3}, r"n_test must be an integer in \[1, 10000000\] .got -3."),
    ({"n_train": 10**12}, r"n_train must be an integer in \[1, 10000000\] .got 1000000000000."),
    ({"dim": 2.5}, r"dim must be an integer in \[1, 100000\] .got 2.5."),
    ({"dim": 10**6}, r"dim must be an integer in \[1, 100000\] .got 1000000."),
    ({"classes": True}, r"classes must be an integer in \[1, 100000\] .got True."),
    ({"classes": "3"}, r"classes must be an integer in \[1, 100000\] .got '3'."),
    ({"classes": 10**6}, r"classes must be an integer in \[1, 100000\]"),
    ({"n_train": 10**7, "dim": 10**5}, r"n_train=10000000, n_test=256 and classes=3 in dim=100000 would make "
                                       r"1e\+12 values \(at most 1e\+09\)"),
    ({"separation": -1.0}, r"separation must be a number in \[0, inf\)"),
    ({"seed": -2}, "seed must be an integer ≥ 0"),
    ({"wrong": 1}, "bad arguments for data set 'gaussian': unknown argument 'wrong'; accepted: n_train, n_test, "
                   "dim, classes, separation, seed$"),
    ({"wrong": 1, "typo": 2}, "unknown arguments 'wrong', 'typo'; accepted"),
])
def test_gaussian_arguments_are_checked(args, message):
    with pytest.raises(SharpnessError, match=message) as info:
        load_data("gaussian", **args)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_root_with_a_nul_character_is_refused_in_one_line(name):
    for trusted in (True, False):
        with pytest.raises(SharpnessError, match=rf"data set '{name}': root '/tmp\\x00x' is not a folder path "
                                                 r"\(it holds a NUL character\)$"):
            load_data(DataSpec(name, {"root": "/tmp\x00x"}), trusted=trusted)


def test_other_registered_sets_list_their_arguments(tmp_path):
    with pytest.raises(SharpnessError, match=r"bad arguments for data set 'digits': unknown argument 'size'; "
                                             r"accepted: test_fraction, seed$"):
        load_data("digits", size=3)
    with pytest.raises(SharpnessError, match=r"test_fraction must be a number in \(0, 1\)"):
        load_data("digits", test_fraction=1.0)
    with pytest.raises(SharpnessError, match=r"data set 'mnist': unknown argument 'path'; accepted: root$"):
        load_data("mnist", path=str(tmp_path))
    with pytest.raises(SharpnessError, match=r"data set 'cifar10': unknown argument 'roots'; accepted: root$"):
        load_data("cifar10", roots=str(tmp_path))
