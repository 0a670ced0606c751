"""Parquet test sets: split files, class names from the features, batched reads equal to reading the images one by
one, and one-sentence errors for a set without labels or with the wrong class count."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from hub_cache import parquet_bytes, png_bytes
from peru_core.data import load_task_data
from peru_core.errors import PeruError
from peru_core.imagefolder import clip_preprocess
from peru_core.parquet_data import (check_parquet, inspect_parquet, iter_parquet, load_parquet, parquet_files,
                                    spread)
from peru_core.zoo.manifest import DataRef

CLASSES = ["zero", "one", "two"]


def _set(n: int, seed: int = 0) -> tuple[list[bytes], list[int]]:
    rng = np.random.default_rng(seed)
    imgs = [png_bytes(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)) for _ in range(n)]
    return imgs, [int(v) for v in rng.integers(0, 3, n)]


@pytest.fixture()
def dataset(tmp_path):
    """A dataset folder as the hub serves it: two test shards and a train shard under data/."""
    (tmp_path / "ds" / "data").mkdir(parents=True)
    test_a, test_b, train = _set(7, 1), _set(5, 2), _set(4, 3)
    for name, (imgs, y) in (("test-00000-of-00002", test_a), ("test-00001-of-00002", test_b),
                            ("train-00000-of-00001", train)):
        (tmp_path / "ds" / "data" / f"{name}.parquet").write_bytes(parquet_bytes(imgs, y, CLASSES))
    return tmp_path / "ds", test_a[0] + test_b[0], test_a[1] + test_b[1]


def test_split_files_features_and_batches_equal_one_by_one_reads(dataset):
    folder, images, labels = dataset
    assert [p.name for p in parquet_files(folder, "test")] == ["test-00000-of-00002.parquet",
                                                               "test-00001-of-00002.parquet"]
    assert [p.name for p in parquet_files(folder, "train")] == ["train-00000-of-00001.parquet"]
    info = inspect_parquet(folder)
    assert (info.rows, info.image_column, info.label_column, info.class_names) == (12, "image", "label",
                                                                                  tuple(CLASSES))
    tf = clip_preprocess(8)
    expected = torch.stack([tf(Image.open(io.BytesIO(b))) for b in images])
    batches = list(iter_parquet(folder, CLASSES, 8, batch_size=4))
    assert [len(y) for _, y in batches] == [4, 3, 4, 1]  # batches never cross a file: each file is streamed
    x, y = load_parquet(folder, CLASSES, 8, batch_size=4)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    assert y.tolist() == labels
    # a limit takes rows spread over the whole set (sets are often sorted by class), decoding only those
    assert spread(12, 5).tolist() == [0, 2, 4, 7, 9] and spread(12, 12) is None
    x5, y5 = load_task_data(DataRef("parquet", folder, "test", limit=6), CLASSES, 8, limit=5)
    torch.testing.assert_close(x5, expected[[0, 2, 4, 7, 9]], rtol=0, atol=0)
    assert y5.tolist() == [labels[i] for i in (0, 2, 4, 7, 9)]
    x3, _ = load_task_data(DataRef("parquet", folder, "test", limit=3), CLASSES, 8, limit=5)  # the smaller cap
    torch.testing.assert_close(x3, expected[[0, 4, 8]], rtol=0, atol=0)
    # a validation split the set lacks: its train split (statistics need unlabelled images only)
    assert [p.name for p in parquet_files(folder, "validation")] == ["train-00000-of-00001.parquet"]


def test_plain_binary_column_single_file_and_no_split_names(tmp_path):
    imgs, y = _set(4)
    f = tmp_path / "anything.parquet"
    f.write_bytes(parquet_bytes(imgs, y, None, image_as_struct=False))
    info = inspect_parquet(f)
    assert info.class_names is None and info.rows == 4
    assert parquet_files(tmp_path) == [f]  # a folder without split names is one set
    x, yy = load_parquet(tmp_path, CLASSES, 8)
    assert x.shape == (4, 3, 8, 8) and yy.tolist() == y


def test_bad_sets_are_one_sentence(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    imgs, y = _set(4)
    nolabel = tmp_path / "nolabel.parquet"
    pq.write_table(pa.table({"image": pa.array(imgs, type=pa.binary()), "caption": ["a"] * 4}), nolabel)
    with pytest.raises(PeruError, match="no label column") as e:
        inspect_parquet(nolabel)
    assert "\n" not in str(e.value) and "nolabel.parquet" in str(e.value)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "test.parquet").write_bytes(parquet_bytes(imgs, y, ["a", "b", "c", "d", "e"]))
    with pytest.raises(PeruError, match="names 5 classes but the task lists 3"):
        check_parquet(wrong, CLASSES)
    nofeat = tmp_path / "nofeat.parquet"
    nofeat.write_bytes(parquet_bytes(imgs, [0, 1, 2, 2], None))
    with pytest.raises(PeruError, match="labels up to 2 but the task lists 2 classes"):
        check_parquet(nofeat, ["a", "b"])
    with pytest.raises(PeruError, match="none of 'train'"):
        parquet_files(wrong, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PeruError, match="holds no .parquet files"):
        parquet_files(tmp_path / "empty")
    with pytest.raises(PeruError, match="does not exist"):
        parquet_files(tmp_path / "missing")
