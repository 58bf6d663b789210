"""Tests for diffax.data: IDX/npz/TFDS sources, the Batches pipeline, toy data sets.

No network and no /work/shared/data: every file is written to tmp_path; the TFDS path runs under
``tfds.testing.mock_data``. Monte Carlo bounds are 5 sigma (two-sided p ~ 6e-7 each); the seeds are
fixed, so the tests are deterministic, and each statistical check has a negative control that fails.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil

import numpy as np
import pytest

from diffax import data
from diffax.data import Batches

tfds = pytest.importorskip("tensorflow_datasets")


# ------------------------------------------------------------------------------------------------ helpers
def _write_mnist_dir(directory, n_train=10, n_test=4, hw=(28, 28), gz=True, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, *hw), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        suffix = ".gz" if gz else ""
        data.write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{suffix}"), images)
        data.write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{suffix}"), labels)
        out[prefix] = (images, labels)
    return out


def _index_data(n, shape=()):
    """Float data whose first entry is the example's index, so a batch tells which examples it holds."""
    x = np.zeros((n, *shape), np.float32) if shape else np.zeros((n,), np.float32)
    x.reshape(n, -1)[:, 0] = np.arange(n)
    return x


def _ids(batch):
    return batch["x"].reshape(batch["x"].shape[0], -1)[:, 0].astype(np.int64)


def _asymmetric_images(n):
    """uint8 (n, 2, 4, 1) images: column j holds 10 j + (example index % 7), so flips are visible."""
    cols = 10 * np.arange(4)[None, None, :, None] + (np.arange(n) % 7)[:, None, None, None]
    return np.broadcast_to(cols, (n, 2, 4, 1)).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ IDX
@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
    arr = (np.arange(2 * 3 * 5).reshape(2, 3, 5) * 3 - 7).astype(dtype) if dtype != np.uint8 else (
        np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    )
    path = str(tmp_path / f"a.idx{suffix}")
    data.write_idx(path, arr)
    back = data.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_idx_magic_numbers_are_mnists(tmp_path):
    # The published MNIST magic numbers: 2051 for (N, 28, 28) uint8 images, 2049 for (N,) uint8 labels.
    data.write_idx(str(tmp_path / "i"), np.zeros((1, 28, 28), np.uint8))
    data.write_idx(str(tmp_path / "l"), np.zeros((1,), np.uint8))
    assert int.from_bytes(open(tmp_path / "i", "rb").read(4), "big") == 2051
    assert int.from_bytes(open(tmp_path / "l", "rb").read(4), "big") == 2049


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_local_loads_what_was_written(tmp_path, gz):
    written = _write_mnist_dir(str(tmp_path), gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = data.load_array("mnist_local", split=split, path=str(tmp_path))
        assert images.dtype == np.uint8 and images.shape == written[prefix][0].shape + (1,)
        assert labels.dtype == np.int32
        np.testing.assert_array_equal(images[..., 0], written[prefix][0])
        np.testing.assert_array_equal(labels, written[prefix][1])
    # a sliced split is the slice of the full one
    images, labels = data.load_array("fashion_mnist_local", split="train[2:5]", data_dir=str(tmp_path))
    np.testing.assert_array_equal(images[..., 0], written["train"][0][2:5])
    np.testing.assert_array_equal(labels, written["train"][1][2:5])


def test_mnist_local_resize(tmp_path):
    _write_mnist_dir(str(tmp_path))
    images, _ = data.load_array("mnist_local", path=str(tmp_path), image_size=32)
    assert images.shape == (10, 32, 32, 1) and images.dtype == np.uint8
    assert data.data_shape("mnist_local", image_size=32) == (32, 32, 1)


def test_missing_idx_file_names_full_path(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load_array("mnist_local", path=str(tmp_path))
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(e.value)
    assert "../shared/data" in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_array("mnist_local", path=str(tmp_path / "nowhere"))


def test_wrong_magic_number(tmp_path):
    _write_mnist_dir(str(tmp_path))
    # swap in a labels file (magic 2049) where the images (magic 2051) are expected
    shutil.copy(tmp_path / "train-labels-idx1-ubyte.gz", tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        data.load_array("mnist_local", path=str(tmp_path))


def test_truncated_idx_and_count_mismatch(tmp_path):
    path = str(tmp_path / "t.gz")
    data.write_idx(path, np.zeros((3, 4, 4), np.uint8))
    raw = gzip.open(path).read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(ValueError, match="payload has 43 bytes"):
        data.read_idx(path)
    _write_mnist_dir(str(tmp_path))
    data.write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), np.zeros(9, np.uint8))
    with pytest.raises(ValueError, match="10 images but .* 9 labels"):
        data.load_array("mnist_local", path=str(tmp_path))


def test_empty_split_is_an_error(tmp_path):
    _write_mnist_dir(str(tmp_path), n_train=0)
    with pytest.raises(ValueError, match="empty"):
        data.load_array("mnist_local", path=str(tmp_path))
    with pytest.raises(ValueError, match="empty"):
        Batches((np.zeros((0, 2), np.float32), None), batch_size=1, seed=0)


def test_verify_md5(tmp_path):
    path = str(tmp_path / "x.gz")
    with gzip.open(path, "wb") as f:
        f.write(b"abc")
    assert data.verify_md5(path, "900150983cd24fb0d6963f7d28e17f72") == "900150983cd24fb0d6963f7d28e17f72"
    with pytest.raises(ValueError, match="md5"):
        data.verify_md5(path, "0" * 32)


def test_damaged_gzip_names_the_file(tmp_path):
    """A truncated .gz (EOFError), a corrupted deflate stream (CRC / zlib error) and a non-gzip file named
    .gz each give one ValueError naming the file; an intact file loads (control)."""
    from diffax.data import sources

    written = _write_mnist_dir(str(tmp_path))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    good = path.read_bytes()
    np.testing.assert_array_equal(data.read_idx(str(path)), written["train"][0])  # control
    damaged = {
        "truncated": (good[:-30], "EOFError"),
        "not gzip": (b"\x00\x00\x08\x03" + bytes(64), "BadGzipFile"),
        "bad trailer": (good[:-8] + bytes(8), "BadGzipFile: CRC check failed"),
    }
    for what, (raw, cause) in damaged.items():
        path.write_bytes(raw)
        with pytest.raises(ValueError, match="damaged or truncated gzip file") as e:
            data.load_array("mnist_local", path=str(tmp_path))
        assert str(path) in str(e.value) and cause in str(e.value), (what, str(e.value))
        with pytest.raises(ValueError, match=str(path)):
            sources.verify_md5(str(path), "0" * 32)


def test_published_mnist_md5_is_checked_for_files_of_the_published_shape(tmp_path, monkeypatch):
    """t10k-labels of the published shape (10000,) must have MNIST's md5; with that md5 patched to the file's
    own it loads (control), and so does a Fashion-MNIST .gz whose md5 is Fashion-MNIST's. A file of another
    shape (a subset, a test fixture) is not md5-checked: every other test here relies on that."""
    from diffax.data import sources

    _write_mnist_dir(str(tmp_path), n_test=4)
    labels = np.random.default_rng(3).integers(0, 10, 10000).astype(np.uint8)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data.write_idx(str(path), labels)
    actual = hashlib.md5(gzip.open(path).read()).hexdigest()
    with pytest.raises(ValueError) as e:
        data.read_idx(str(path))
    assert str(e.value).startswith(f"{path}: md5 of the decompressed bytes is {actual}, expected "
                                   f"{sources.MNIST_MD5['t10k-labels-idx1-ubyte']}")  # fmt: skip
    monkeypatch.setitem(sources.MNIST_MD5, "t10k-labels-idx1-ubyte", actual)
    np.testing.assert_array_equal(data.read_idx(str(path)), labels)
    monkeypatch.setitem(sources.MNIST_MD5, "t10k-labels-idx1-ubyte", "0" * 32)
    gz_md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(sources.FASHION_MNIST_GZ_MD5, "t10k-labels-idx1-ubyte", gz_md5)
    np.testing.assert_array_equal(data.read_idx(str(path)), labels)
    # The same content uncompressed has no Fashion-MNIST .gz md5 to match: refused.
    raw_path = tmp_path / "raw" / "t10k-labels-idx1-ubyte"
    raw_path.parent.mkdir()
    data.write_idx(str(raw_path), labels)
    with pytest.raises(ValueError, match=f"{raw_path}: md5 of the decompressed bytes is {actual}"):
        data.read_idx(str(raw_path))


def test_not_an_npz_names_the_file_and_what_is_expected(tmp_path):
    import pickle
    import zipfile

    path = tmp_path / "d.npz"
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    # what -> (write the file, expected message part, also raised by data_shape's header-only read)
    cases = {
        "pickle": (lambda: path.write_bytes(pickle.dumps({"images": images})), "not a zip archive", True),
        "bare .npy": (lambda: np.save(open(path, "wb"), images), "a single .npy array, not an .npz archive", True),
        "truncated": (lambda: path.write_bytes(good[: len(good) // 2]), "not a zip archive (truncated?)", True),
        # the damage is in the member's data, past the header that data_shape reads
        "bad member": (lambda: path.write_bytes(bad_member), "unreadable .npz (BadZipFile: Bad CRC-32", False),
        "no images": (lambda: np.savez(open(path, "wb"), x=images), "no key 'images' (keys: ['x'])", True),
    }
    with open(path, "wb") as f:
        np.savez(f, images=images)
    good = path.read_bytes()
    np.testing.assert_array_equal(data.load_array("npz", path=str(path))[0], images)  # control
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("images.npy")
    bad_member = bytearray(good)
    bad_member[info.header_offset + 30 + len(info.filename) + info.file_size // 2] ^= 0xFF
    bad_member = bytes(bad_member)
    for what, (write, expected, header_too) in cases.items():
        write()
        loaders = [lambda: data.load_array("npz", path=str(path))]
        loaders += [lambda: data.data_shape("npz", path=str(path))] if header_too else []
        for load in loaders:
            with pytest.raises(ValueError) as e:
                load()
            msg = str(e.value)
            assert msg.startswith(f"{path}: ") and expected in msg, (what, msg)
            assert "numpy.savez" in msg, msg  # says what is expected


# ------------------------------------------------------------------------------------------------ npz
def test_npz_source(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(6)
    np.savez(tmp_path / "rgb.npz", images=rgb, labels=labels)
    x, y = data.load_array("npz", path=str(tmp_path / "rgb.npz"))
    np.testing.assert_array_equal(x, rgb)
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == np.int32
    assert data.data_shape("npz", path=str(tmp_path / "rgb.npz")) == (4, 4, 3)

    gray = rng.integers(0, 256, (5, 3, 3), dtype=np.uint8)
    np.savez(tmp_path / "gray.npz", images=gray)
    x, y = data.load_array("npz", path=str(tmp_path / "gray.npz"))
    assert y is None and x.shape == (5, 3, 3, 1)
    np.testing.assert_array_equal(x[..., 0], gray)
    assert data.data_shape("npz", path=str(tmp_path / "gray.npz")) == (3, 3, 1)
    batch = next(data.build_batches("npz", path=str(tmp_path / "gray.npz"), batch_size=5, seed=0,
                                    process_index=0, process_count=1))
    assert set(batch) == {"x"} and batch["x"].shape == (5, 3, 3, 1)


def test_npz_bad_inputs(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        data.load_array("npz", path=str(tmp_path / "f.npz"))
    np.savez(tmp_path / "k.npz", x=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="no key 'images'"):
        data.load_array("npz", path=str(tmp_path / "k.npz"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing.npz")):
        data.load_array("npz", path=str(tmp_path / "missing.npz"))


# ------------------------------------------------------------------------------------------------ Batches
def test_scaling_to_minus_one_one_is_exact():
    images = np.array([0, 255, 51, 128], np.uint8).reshape(4, 1, 1, 1)
    batch = next(Batches((images, None), batch_size=4, seed=0, shuffle=False))
    assert batch["x"].dtype == np.float32
    np.testing.assert_array_equal(batch["x"].ravel()[:2], [-1.0, 1.0])  # the endpoints exactly
    # interior values: x / 127.5 - 1 to float32 rounding (|error| <= 2^-24 relative + 1 ulp of 1)
    np.testing.assert_allclose(batch["x"].ravel()[2:], np.array([51, 128]) / 127.5 - 1, rtol=0, atol=2e-7)
    raw = next(Batches((images, None), batch_size=4, seed=0, shuffle=False, to_float=False))
    np.testing.assert_array_equal(raw["x"], images)  # to_float=False keeps uint8
    # float (toy) data pass through unchanged, bitwise
    x = np.float32([[-3.25], [7.5], [1e-7]])
    out = next(Batches((x, None), batch_size=3, seed=0, shuffle=False))["x"]
    assert out.dtype == np.float32 and out.tobytes() == x.tobytes()


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_example_once_per_epoch(shuffle):
    n, b = 50, 8
    it = Batches((_index_data(n), np.arange(n) % 3), batch_size=b, seed=3, shuffle=shuffle)
    assert it.steps_per_epoch == 6
    for epoch in range(2):
        ids = np.concatenate([_ids(next(it)) for _ in range(it.steps_per_epoch)])
        assert len(np.unique(ids)) == 48  # 6 full batches, no repeats; 2 examples dropped
        if not shuffle:
            np.testing.assert_array_equal(ids, np.arange(48))
    # without drop_remainder: all 50 exactly once, the last batch has 2
    it = Batches((_index_data(n), None), batch_size=b, seed=3, drop_remainder=False, num_epochs=1)
    batches = list(it)
    assert it.steps_per_epoch == 7 and [len(_ids(x)) for x in batches] == [8] * 6 + [2]
    np.testing.assert_array_equal(np.sort(np.concatenate([_ids(x) for x in batches])), np.arange(n))


def test_labels_follow_their_examples():
    n = 20
    x, y = _index_data(n), (np.arange(n) * 7 % 5).astype(np.int64)
    batch = next(Batches((x, y), batch_size=10, seed=0))
    assert batch["y"].dtype == np.int32
    np.testing.assert_array_equal(batch["y"], y[_ids(batch)])


def test_seeds_fix_the_order():
    def order(seed, epochs=2):
        it = Batches((_index_data(40), None), batch_size=10, seed=seed)
        return np.concatenate([_ids(next(it)) for _ in range(4 * epochs)])

    a, b, c = order(0), order(0), order(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[:40], a[40:])  # a fresh permutation each epoch


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_partition_the_global_batch(process_count):
    n, b = 96, 4
    images = _asymmetric_images(n)
    labels = np.arange(n)
    kw = dict(seed=5, random_flip=True)
    single = Batches((images, labels), batch_size=b * process_count, **kw)
    shards = [Batches((images, labels), batch_size=b, process_index=p, process_count=process_count, **kw)
              for p in range(process_count)]
    assert all(s.steps_per_epoch == single.steps_per_epoch for s in shards)
    for _ in range(single.steps_per_epoch + 2):  # crosses an epoch boundary
        whole = next(single)
        parts = [next(s) for s in shards]
        ys = [part["y"] for part in parts]
        assert len(np.unique(np.concatenate(ys))) == b * process_count  # disjoint
        for key in ("x", "y"):  # same examples, same order, same flips
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), whole[key])
    # the state counts global batches, so it is the same whatever the process count
    assert all(s.get_state() == single.get_state() for s in shards)


@pytest.mark.parametrize("stop", [0, 3, 5, 6, 13])
def test_resume_is_bitwise_identical(stop):
    n, b = 45, 8  # 5 steps per epoch (5 examples dropped): stops 5 and 6 straddle the epoch boundary
    images, labels = _asymmetric_images(n), np.arange(n)
    make = lambda: Batches((images, labels), batch_size=b, seed=11, random_flip=True)  # noqa: E731
    reference = make()
    expected = [next(reference) for _ in range(20)]
    interrupted = make()
    for _ in range(stop):
        next(interrupted)
    state = json.loads(json.dumps(interrupted.get_state()))  # plain ints survive a JSON checkpoint
    assert set(state) == {"epoch", "position"} and all(type(v) is int for v in state.values())
    resumed = make()
    resumed.set_state({k: np.int64(v) for k, v in state.items()})
    for want in expected[stop:]:
        got = next(resumed)
        assert got["x"].tobytes() == want["x"].tobytes()
        assert got["y"].tobytes() == want["y"].tobytes()


def test_num_epochs_stops():
    it = Batches((_index_data(10), None), batch_size=5, seed=0, num_epochs=3)
    assert len(list(it)) == 6
    assert it.get_state() == {"epoch": 3, "position": 0}


def test_random_flip_reproducible_and_about_half():
    n = 2000
    images = _asymmetric_images(n)
    it = Batches((images, np.arange(n)), batch_size=n, seed=2, random_flip=True, to_float=False)
    batch = next(it)
    original = images[batch["y"]]
    flipped = np.all(batch["x"] == original[:, :, ::-1], axis=(1, 2, 3))
    unchanged = np.all(batch["x"] == original, axis=(1, 2, 3))
    assert np.all(flipped ^ unchanged)  # each image is exactly itself or its mirror image
    # fraction flipped ~ Binomial(2000, 1/2) / 2000: 5 sigma = 5 * sqrt(0.25 / 2000) = 0.056
    assert abs(flipped.mean() - 0.5) < 0.056
    again = next(Batches((images, np.arange(n)), batch_size=n, seed=2, random_flip=True, to_float=False))
    np.testing.assert_array_equal(again["x"], batch["x"])
    # negative control: without random_flip nothing is flipped
    plain = next(Batches((images, np.arange(n)), batch_size=n, seed=2, to_float=False))
    np.testing.assert_array_equal(plain["x"], images[plain["y"]])
    with pytest.raises(ValueError, match="random_flip needs images"):
        Batches((_index_data(10), None), batch_size=2, seed=0, random_flip=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=11), "global batch size 11"),
        (dict(batch_size=4, process_count=3), r"global batch size 12 \(batch_size 4 x process_count 3\)"),
        (dict(batch_size=0), "batch_size must be an int >= 1, got 0"),
        (dict(batch_size=2, process_index=2, process_count=2), r"process_index must be in \[0, 2\), got 2"),
        (dict(batch_size=2, seed=-1), "seed must be"),
    ],
)
def test_batches_bad_arguments(kwargs, match):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        Batches((_index_data(10), None), **kwargs)


def test_set_state_validates():
    it = Batches((_index_data(10), None), batch_size=5, seed=0)
    with pytest.raises(ValueError, match="expected keys"):
        it.set_state({"epoch": 0})
    with pytest.raises(ValueError, match="position"):
        it.set_state({"epoch": 0, "position": 3})


def test_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'.*mnist_local"):
        data.load_array("imagenet")
    with pytest.raises(ValueError, match="unknown data set"):
        data.build_batches("imagenet", batch_size=1, seed=0, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="unknown toy data set 'moons'.*two_moons"):
        data.toy("moons", 10, seed=0)


# ------------------------------------------------------------------------------------------------ TFDS
# tfds 4.9.10 without TensorFlow: `mock_data` mocks `tfds.data_source` by patching ArrayRecordDataSource
# and the builder's `as_data_source`, so neither prepared files nor TF are needed. USE_CODE builds the
# features from the dataset's code; AUTO falls back to USE_CODE here (tfds ships no metadata files for
# these data sets) and USE_FILES fails for the same reason. The mock ignores split slices, and its
# `__getitems__` is broken (a partial without `self`), which is why `Batches` reads item by item.
@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_load_array_and_lazy_batches_agree(mock_tfds, name, shape):
    images, labels = data.load_array(name)
    assert images.shape == (12, *shape) and images.dtype == np.uint8 and data.data_shape(name) == shape
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < data.num_classes(name)
    ds = tfds.data_source(name, split="train")
    np.testing.assert_array_equal(images[3], ds[3]["image"])
    kw = dict(batch_size=4, seed=7, random_flip=True, process_index=0, process_count=1)
    lazy = data.build_batches(name, **kw)  # reads the data source record by record
    eager = Batches((images, labels), **{k: v for k, v in kw.items()})
    for _ in range(5):  # more than one epoch (3 steps each)
        a, b = next(lazy), next(eager)
        assert a["x"].tobytes() == b["x"].tobytes() and np.array_equal(a["y"], b["y"])
        assert a["x"].min() >= -1.0 and a["x"].max() <= 1.0


def test_tfds_celeb_a_crop_resize(mock_tfds):
    images, labels = data.load_array("celeb_a", image_size=8)
    assert images.shape == (12, 8, 8, 3) and labels is None
    batch = next(data.build_batches("celeb_a", batch_size=3, seed=0, process_index=0, process_count=1))
    assert set(batch) == {"x"} and batch["x"].shape == (3, 64, 64, 3) == (3, *data.data_shape("celeb_a"))


def test_center_crop_resize_takes_the_center():
    image = np.zeros((218, 178, 3), np.uint8)
    image[39:179, 19:159] = 200  # exactly the central 140 x 140 square
    out = data.center_crop_resize(image, size=64, crop=140)
    assert out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out, 200)  # nothing from outside the crop leaks in


def test_tfds_not_prepared_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "mnist")):
        data.load_array("mnist", data_dir=str(tmp_path))


# ------------------------------------------------------------------------------------------------ toys
@pytest.mark.parametrize("name", data.TOY_DATASETS)
def test_toy_shapes_and_determinism(name):
    x, y = data.toy(name, 64, seed=4)
    x2, y2 = data.toy(name, 64, seed=4)
    x3, _ = data.toy(name, 64, seed=5)
    assert x.dtype == np.float32 and x.shape == (64, *data.data_shape(name))
    assert x.tobytes() == x2.tobytes() and not np.array_equal(x, x3)
    k = data.num_classes(name)
    if k is None:
        assert y is None
    else:
        assert y.dtype == np.int32 and y.shape == (64,) and np.array_equal(y, y2)
        assert y.min() >= 0 and y.max() < k


def _check_gmm1d(x):
    """Moments and mode weights of 0.5 N(-2, 0.25) + 0.5 N(2, 0.25) from n samples, 5 sigma bounds.

    mean 0, var 4.25 (se sqrt(4.25/n)); var's se sqrt((E x^4 - var^2)/n) with E x^4 = 16 + 6 + 3/16;
    P(x > 0) = 1/2 (se sqrt(0.25/n)); P(|x| > 1) = Phi(2) + Phi(-6) = 0.97725 (se sqrt(p(1-p)/n)).
    """
    n = x.shape[0]
    assert abs(x.mean()) < 5 * math.sqrt(4.25 / n)
    assert abs(x.var() - 4.25) < 5 * math.sqrt((22.1875 - 4.25**2) / n)
    assert abs((x > 0).mean() - 0.5) < 5 * math.sqrt(0.25 / n)
    p = 0.977249868
    assert abs((np.abs(x) > 1).mean() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_gmm1d_statistics():
    x, y = data.toy("gmm1d", 20_000, seed=0)
    x = x[:, 0].astype(np.float64)
    _check_gmm1d(x)
    # labels are the components: x - mu_y ~ N(0, 0.5^2) (5 sigma bounds on mean and std of 20 000 draws)
    r = x - np.where(y == 1, 2.0, -2.0)
    assert abs(r.mean()) < 5 * 0.5 / math.sqrt(20_000) and abs(r.std() - 0.5) < 5 * 0.5 / math.sqrt(2 * 20_000)
    # negative control: a moment-matched Gaussian N(0, 4.25) must fail the mode-weight check
    fake = np.random.default_rng(0).normal(0.0, math.sqrt(4.25), 20_000)
    with pytest.raises(AssertionError):
        _check_gmm1d(fake)


@pytest.mark.parametrize("name", ["gmm2d", "gmm2d_grid", "gmm2d_ring"])
def test_gmm2d_toys_match_their_oracle(name):
    mix = data.toy_mixture(name)
    w, mu, sd = (np.asarray(a, np.float64) for a in (mix.weights, mix.means, mix.stds))
    n = 50_000
    x, y = data.toy(name, n, seed=1)
    counts = np.bincount(y, minlength=len(w))
    # component frequencies: 5 sigma binomial bounds
    assert np.all(np.abs(counts / n - w) < 5 * np.sqrt(w * (1 - w) / n))
    for k in range(len(w)):
        r = (x[y == k] - mu[k]) / sd[k]  # standardized residual ~ N(0, I)
        m = len(r)
        assert np.all(np.abs(r.mean(0)) < 5 / math.sqrt(m))
        assert np.all(np.abs(r.std(0) - 1) < 5 / math.sqrt(2 * m))


def test_two_moons_support():
    x, y = data.toy("two_moons", 4000, seed=0)
    p = x.astype(np.float64) + np.array([0.5, 0.25])  # back to sklearn's coordinates
    # outer moon: unit circle around 0, upper half; inner: unit circle around (1, 1/2), lower half.
    # Jitter N(0, 0.05^2 I): its norm exceeds 6 sigma = 0.3 with probability exp(-18) = 1.5e-8.
    centre = np.where(y[:, None] == 0, [0.0, 0.0], [1.0, 0.5])
    dist = np.abs(np.linalg.norm(p - centre, axis=1) - 1.0)
    assert dist.max() < 0.3
    assert np.all(p[y == 0, 1] > -0.3) and np.all(p[y == 1, 1] < 0.8)
    assert abs(y.mean() - 0.5) < 5 * math.sqrt(0.25 / 4000)
    # negative control: swapping the labels puts points far from their arcs
    wrong_centre = np.where(y[:, None] == 1, [0.0, 0.0], [1.0, 0.5])
    assert np.abs(np.linalg.norm(p - wrong_centre, axis=1) - 1.0).max() > 0.3


def test_checkerboard_support():
    n = 8000
    x, _ = data.toy("checkerboard", n, seed=0)
    x = x.astype(np.float64)
    assert np.all((x >= -2) & (x < 2))
    cells = np.floor(x).astype(int)
    assert np.all((cells.sum(1) % 2) == 0)  # only the "black" cells
    # each of the 8 cells holds 1/8 of the mass: 5 sigma binomial bounds
    _, counts = np.unique(cells, axis=0, return_counts=True)
    assert len(counts) == 8 and np.all(np.abs(counts / n - 1 / 8) < 5 * math.sqrt((1 / 8) * (7 / 8) / n))
    # negative control: uniform points on the square violate the parity
    u = np.random.default_rng(0).uniform(-2, 2, (100, 2))
    assert not np.all((np.floor(u).astype(int).sum(1) % 2) == 0)


def test_swiss_roll_support():
    x, _ = data.toy("swiss_roll", 4000, seed=0)
    x = x.astype(np.float64)
    r = np.linalg.norm(x, axis=1)
    # noise-free points have radius t/5 in [0.3 pi, 0.9 pi]; jitter norm < 0.3 (see two_moons)
    assert r.min() > 0.3 * math.pi - 0.3 and r.max() < 0.9 * math.pi + 0.3
    # on the spiral: 5 r ~ t and the angle ~ t mod 2 pi; arms are 2 pi apart in t, the error is
    # |5 dr| + |d angle| < 1.5 + 0.3 / 0.94 < 1.9 < pi
    theta = np.arctan2(x[:, 1], x[:, 0])
    k = np.round((5 * r - theta) / (2 * math.pi))
    assert np.abs(5 * r - (theta + 2 * math.pi * k)).max() < 1.9


@pytest.mark.parametrize("name, n", [("gmm1d", 800), ("two_moons", 10_000)])
def test_build_batches_toy(name, n):
    it = data.build_batches(name, batch_size=100, seed=3, process_index=0, process_count=1)
    assert it.num_examples == n and data.DEFAULT_NUM_TRAIN[name] == n
    x, y = data.toy(name, n, seed=3)
    batch = next(it)
    # the batch is a subset of the toy training set, labels attached
    rows = {tuple(r) for r in x}
    assert all(tuple(r) in rows for r in batch["x"]) and batch["y"].dtype == np.int32
    test = data.build_batches(name, batch_size=100, seed=3, split="test", process_index=0, process_count=1)
    tx = next(test)["x"]
    assert not any(tuple(r) in rows for r in tx)  # an independent held-out draw
