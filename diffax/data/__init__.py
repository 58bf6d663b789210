"""Data for training diffusion models: toy point clouds and image data sets, as numpy batches.

    x, labels = toy('gmm1d', 800, seed=0)                         # float32 (800, 1), int32 (800,)
    images, labels = load_array('mnist_local', path='../shared/data/mnist')   # uint8 (60000, 28, 28, 1)
    batches = build_batches('mnist_local', batch_size=128, seed=0, path='../shared/data/mnist')
    batch = next(batches)                                         # {'x': float32 in [-1, 1], 'y': int32}
    state = batches.get_state(); ...; batches.set_state(state)    # exact resume

Names: `TOY_DATASETS` (generated in numpy, `toy`) and `IMAGE_DATASETS`: the TFDS sets 'mnist',
'fashion_mnist', 'cifar10', 'celeb_a' (read via ``tfds.data_source``: ArrayRecord, no TensorFlow, must be
prepared beforehand; these machines are offline) and the local 'mnist_local', 'fashion_mnist_local'
(a directory of MNIST-format IDX files) and 'npz' (an .npz with 'images' and optional 'labels').
No TensorFlow, no grain: the pipeline is plain numpy (`Batches`).
"""

from __future__ import annotations

import numpy as np

from diffax.data.pipeline import Batches
from diffax.data.sources import (
    CELEBA_CROP,
    IMAGE_DATASETS,
    LOCAL_IDX_DATASETS,
    MNIST_MD5,
    TFDS_DATASETS,
    TfdsImageSource,
    center_crop_resize,
    load_idx_split,
    load_npz,
    npz_shape,
    read_idx,
    tfds_source,
    verify_md5,
    write_idx,
)
from diffax.data.toys import TOY_DATASETS, toy, toy_dim, toy_mixture, toy_num_classes

__all__ = [
    "TOY_DATASETS",
    "IMAGE_DATASETS",
    "DEFAULT_NUM_TRAIN",
    "toy",
    "toy_mixture",
    "load_array",
    "Batches",
    "build_batches",
    "data_shape",
    "num_classes",
    "read_idx",
    "write_idx",
    "verify_md5",
    "MNIST_MD5",
    "center_crop_resize",
]

ALL_DATASETS = TOY_DATASETS + IMAGE_DATASETS

# Number of toy training points `build_batches` draws when num_train is None.
DEFAULT_NUM_TRAIN: dict[str, int] = {name: (800 if name == "gmm1d" else 10_000) for name in TOY_DATASETS}

_IMAGE_SHAPES = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "mnist_local": (28, 28, 1),
    "fashion_mnist_local": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "celeb_a": (64, 64, 3),  # after the default central 140 crop + resize to 64
}
_NUM_CLASSES = {
    "mnist": 10,
    "fashion_mnist": 10,
    "mnist_local": 10,
    "fashion_mnist_local": 10,
    "cifar10": 10,
    "celeb_a": None,
    "npz": None,
}
CELEBA_DEFAULT_SIZE = 64


def _check_name(name: str) -> None:
    if name not in ALL_DATASETS:
        raise ValueError(f"unknown data set {name!r}; allowed: {ALL_DATASETS}")


def num_classes(name: str) -> int | None:
    """Number of labels of data set ``name`` (None: unlabelled, or for 'npz' unknown until loaded)."""
    _check_name(name)
    return toy_num_classes(name) if name in TOY_DATASETS else _NUM_CLASSES[name]


def data_shape(name: str, *, path: str | None = None, image_size: int | None = None) -> tuple[int, ...]:
    """Per-example shape: (D,) for toys, (H, W, C) for images ('npz' reads its header from ``path``)."""
    _check_name(name)
    if name in TOY_DATASETS:
        return (toy_dim(name),)
    if name == "npz":
        shape = npz_shape(path)
    else:
        shape = _IMAGE_SHAPES[name]
    return shape if image_size is None else (image_size, image_size, shape[-1])


def _resize_all(images: np.ndarray, size: int, crop: int | None) -> np.ndarray:
    if images.shape[1] == size and images.shape[2] == size:
        return images
    return np.stack([center_crop_resize(im, size=size, crop=crop) for im in images])


def _tfds_image_source(name, split, data_dir, image_size) -> TfdsImageSource:
    if name == "celeb_a":
        image_size, crop = image_size or CELEBA_DEFAULT_SIZE, CELEBA_CROP
    else:
        crop = None
    return TfdsImageSource(tfds_source(name, split, data_dir=data_dir), image_size=image_size, crop=crop)


def load_array(
    name: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    path: str | None = None,
    image_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The whole split of an image data set in memory: (images uint8 (N, H, W, C), labels int32 (N,) or None).

    - 'mnist_local' / 'fashion_mnist_local': ``path`` (or ``data_dir``) is a directory of IDX files
      ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (split 'train' or 'test'; slices 'train[:n]').
    - 'npz': ``path`` is the .npz file (one split, 'train').
    - 'mnist', 'fashion_mnist', 'cifar10', 'celeb_a': every record of ``tfds.data_source`` (prepared under
      ``data_dir``), decoded one by one. Memory: N H W C bytes (MNIST 47 MB, CIFAR-10 154 MB, CelebA train
      at 64x64 2.0 GB); for CelebA prefer `build_batches`, which reads lazily.
    ``image_size``: central square crop + bicubic resize to image_size x image_size (CelebA: the central
    140x140, to 64 by default, as in score_sde).
    """
    _check_name(name)
    if name in TOY_DATASETS:
        raise ValueError(f"{name!r} is a toy data set: use toy(name, n, seed=...); load_array takes {IMAGE_DATASETS}")
    if name in LOCAL_IDX_DATASETS:
        images, labels = load_idx_split(path or data_dir, split, num_classes=10)
    elif name == "npz":
        images, labels = load_npz(path, split)
    else:
        src = _tfds_image_source(name, split, data_dir, image_size)
        if len(src) == 0:
            raise ValueError(f"split {split!r} of TFDS {name!r} is empty (0 examples)")
        items = [src[i] for i in range(len(src))]
        images = np.stack([im for im, _ in items])
        labels = np.asarray([lab for _, lab in items], np.int32) if src.has_labels else None
        return images, labels
    if image_size is not None:
        images = _resize_all(images, image_size, None)
    return images, labels


def build_batches(
    name: str,
    *,
    batch_size: int,
    seed: int,
    split: str = "train",
    data_dir: str | None = None,
    path: str | None = None,
    random_flip: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    num_train: int | None = None,
    image_size: int | None = None,
    shuffle: bool = True,
    drop_remainder: bool = True,
    num_epochs: int | None = None,
) -> Batches:
    """The `Batches` the training loop iterates: ``batch_size`` per process, sharded by process.

    Toys: ``num_train`` points (default `DEFAULT_NUM_TRAIN`: 800 for gmm1d, the seed experiment's size,
    10 000 for the 2-D toys) from ``toy(name, num_train, seed=seed)`` for split 'train'; split 'test' draws
    an independent set from the stream ``(seed, TEST_TAG)``. Local images are loaded in memory
    (`load_array`); TFDS sets are read lazily, record by record, through ``tfds.data_source``.
    ``process_index`` / ``process_count`` default to ``jax.process_index()`` / ``jax.process_count()``.
    """
    _check_name(name)
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if name in TOY_DATASETS:
        n = DEFAULT_NUM_TRAIN[name] if num_train is None else num_train
        if split == "train":
            source = toy(name, n, seed=seed)
        elif split == "test":
            source = _toy_test(name, n, seed)
        else:
            raise ValueError(f"bad split {split!r} for toy data: allowed 'train', 'test'")
    elif name in TFDS_DATASETS:
        source = _tfds_image_source(name, split, data_dir, image_size)
    else:
        source = load_array(name, split=split, data_dir=data_dir, path=path, image_size=image_size)
    return Batches(
        source,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        random_flip=random_flip,
        process_index=process_index,
        process_count=process_count,
        num_epochs=num_epochs,
    )


TEST_TAG = 0x54455354  # "TEST"


def _toy_test(name: str, n: int, seed: int):
    """Held-out toy points: `toy` drawn from ``default_rng((seed, TEST_TAG))``, independent of the train set."""
    # toy() takes an int seed: derive a 64-bit one from the tagged stream (independent of `seed`'s stream).
    test_seed = int(np.random.SeedSequence((int(seed), TEST_TAG)).generate_state(1, np.uint64)[0])
    return toy(name, n, seed=test_seed)
