import numpy as np
import pytest
import torch

from sharpness import DataSpec, SharpnessError, load_data
from sharpness.data import input_shape, num_classes


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
