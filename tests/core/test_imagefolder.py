"""Image-folder test sets, built here with PIL."""
from __future__ import annotations

import pytest
import torch
from open_clip.transform import image_transform
from PIL import Image

from peru_core.data import load_task_data
from peru_core.errors import PeruError
from peru_core.imagefolder import CLIP_MEAN, CLIP_STD, iter_image_folder, load_image_folder, match_class_folders
from peru_core.zoo.manifest import DataRef

CLASSES = ["cat", "dog", "big bird"]
COLOURS = {"Cat": (200, 10, 10), "dog": (10, 200, 10), "big_bird": (10, 10, 200)}


@pytest.fixture
def folder(tmp_path):
    """3 class folders named loosely (case, '_'), 2-3 images each in assorted sizes, modes and formats."""
    root = tmp_path / "test"
    for name, rgb in COLOURS.items():
        d = root / name
        d.mkdir(parents=True)
        Image.new("RGB", (40, 30), rgb).save(d / "a.png")
        Image.new("RGB", (20, 50), rgb).convert("L").save(d / "b.JPG", quality=95)
        if name != "dog":
            Image.new("RGBA", (33, 33), (*rgb, 255)).save(d / "c.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_loads_every_image_with_the_class_index_of_its_folder(folder):
    x, y = load_image_folder(folder, CLASSES, 24, batch_size=2)
    assert x.shape == (8, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [3, 2, 3]
    # a solid-colour PNG stays solid after resize and crop: each channel is (c / 255 - mean) / std
    first_cat = x[(y == 0).nonzero()[0, 0]]
    expected = (torch.tensor(COLOURS["Cat"]) / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(first_cat.mean(dim=(1, 2)), expected, atol=2e-2, rtol=0)


def test_matches_open_clip_eval_transform_exactly(folder):
    x, _ = load_image_folder(folder, CLASSES, 24, limit=1)  # the first image of class 0 (Cat/a.png)
    with Image.open(folder / "Cat" / "a.png") as img:
        ref = image_transform(24, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)(img.convert("RGB"))
    assert torch.equal(x[0], ref)


def test_batches_and_limit_are_class_balanced(folder):
    batches = list(iter_image_folder(folder, CLASSES, 16, batch_size=3))
    assert [len(b[1]) for b in batches] == [3, 3, 2]
    x_all, y_all = load_image_folder(folder, CLASSES, 16)
    assert torch.equal(torch.cat([b[0] for b in batches]), x_all) and torch.equal(torch.cat([b[1] for b in batches]), y_all)
    _, y = load_image_folder(folder, CLASSES, 16, limit=3)
    assert sorted(y.tolist()) == [0, 1, 2]


def test_custom_preprocess(folder):
    x, _ = load_image_folder(folder, CLASSES, preprocess=lambda img: torch.zeros(1, 2, 2))
    assert x.shape == (8, 1, 2, 2)
    with pytest.raises(PeruError, match="image size"):
        load_image_folder(folder, CLASSES)


def test_unnamed_folders_fall_back_to_sorted_order_numerically(tmp_path):
    for name in ("10", "2", "1"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8), (int(name), 0, 0)).save(tmp_path / name / "x.png")
    assert [p.name for p in match_class_folders(tmp_path, ["a", "b", "c"])] == ["1", "2", "10"]


def test_count_mismatch_names_the_problem(folder):
    with pytest.raises(PeruError, match="3 class sub-folders but the task lists 4 classes .*no folder for class 'fish'"):
        load_image_folder(folder, CLASSES + ["fish"], 16)
    with pytest.raises(PeruError, match="3 class sub-folders but the task lists 2 classes .*'big_bird' is not a class"):
        load_image_folder(folder, CLASSES[:2], 16)
    with pytest.raises(PeruError, match="no sub-folder is named after class 'bird'"):
        load_image_folder(folder, ["cat", "dog", "bird"], 16)


def test_unreadable_image_and_missing_folder(folder, tmp_path):
    (folder / "dog" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PeruError, match="broken.png is not a readable image"):
        load_image_folder(folder, CLASSES, 16)
    with pytest.raises(PeruError, match="does not exist"):
        load_image_folder(tmp_path / "nope", CLASSES, 16)


def test_data_module_reads_folders_through_this_loader(folder):
    x, y = load_task_data(DataRef("folder", folder), CLASSES, 16, limit=4)
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 1, 2, 0]
