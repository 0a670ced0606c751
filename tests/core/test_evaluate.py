"""Evaluation: preprocessing, cheap state-dict loading, and accuracy on cases with a known answer."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peru_core.data import load_task_data, preprocess_uint8
from peru_core.errors import PeruError
from peru_core.evaluate import accuracy_of, evaluate, image_features, load_tuned, predict
from peru_core.models import create_clip
from peru_core.zoo.manifest import DataRef
from tiny_zoo import ARCH, TINY_CONFIG


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return create_clip(ARCH, TINY_CONFIG)


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8)


def test_preprocess_copies_grey_to_three_channels_and_normalizes():
    x = np.array([[[0, 255], [255, 0]]], dtype=np.uint8)
    t = preprocess_uint8(x, 2, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert t.shape == (1, 3, 2, 2) and t.dtype == torch.float32
    assert t[0, :, 0, 1].tolist() == [2.0, 1.0, 0.5]  # (1 - 0.5) / std
    assert t[0, :, 0, 0].tolist() == [-2.0, -1.0, -0.5]
    assert preprocess_uint8(np.zeros((2, 16, 16, 3), np.uint8), 8).shape == (2, 3, 8, 8)  # resized


def test_known_answer_accuracy(model):
    """Heads are the features of four prototype images: each prototype is its own class (accuracy 1); relabelling
    two of them makes exactly half of the predictions wrong (accuracy 0.5)."""
    x = preprocess_uint8(_images(4), 8)
    head = image_features(model, x) * 50.0
    y = torch.arange(4)
    assert predict(model, head, x).tolist() == [0, 1, 2, 3]
    assert evaluate(model, {}, "visual.", head, x, y) == 1.0
    assert evaluate(model, {}, "visual.", head, x, torch.tensor([0, 1, 3, 2])) == 0.5
    assert accuracy_of(torch.tensor([1, 1, 0]), torch.tensor([1, 0, 0])) == pytest.approx(2 / 3)


def test_predict_is_argmax_of_normalized_features_times_head(model):
    x = preprocess_uint8(_images(10, seed=3), 8)
    head = torch.randn(5, TINY_CONFIG["embed_dim"])
    with torch.no_grad():
        ref = (F.normalize(model.encode_image(x), dim=-1) @ head.T).argmax(-1)
    assert torch.equal(predict(model, head, x, batch_size=3), ref)  # batching does not change results


def test_load_tuned_copies_in_place_with_base_fallback(model):
    params = dict(model.named_parameters())
    key = "visual.conv1.weight"
    ptr = params[key].data_ptr()
    base = {k: v.detach().clone() for k, v in params.items() if k.startswith("visual.")}
    load_tuned(model, {key: torch.full_like(base[key], 0.5)}, "visual.", base)
    assert params[key].data_ptr() == ptr and bool((params[key] == 0.5).all())
    load_tuned(model, {}, "visual.", base)  # missing keys come from the base
    assert torch.equal(params[key], base[key])
    with pytest.raises(PeruError, match="not a tuned parameter"):
        load_tuned(model, {"logit_scale": torch.zeros(())}, "visual.")
    with pytest.raises(PeruError, match="shape"):
        load_tuned(model, {key: torch.zeros(1)}, "visual.")


def test_load_task_data_checks_labels_and_arrays(tmp_path):
    np.savez(tmp_path / "ok.npz", x=_images(5), y=np.array([0, 1, 0, 1, 1]))
    x, y = load_task_data(DataRef("npz", tmp_path / "ok.npz"), ["a", "b"], 8, limit=3)
    assert x.shape == (3, 3, 8, 8) and y.dtype == torch.int64 and y.tolist() == [0, 1, 0]
    np.savez(tmp_path / "bad_label.npz", x=_images(2), y=np.array([0, 2]))
    with pytest.raises(PeruError, match="labels outside"):
        load_task_data(DataRef("npz", tmp_path / "bad_label.npz"), ["a", "b"], 8)
    np.savez(tmp_path / "float.npz", x=np.zeros((2, 8, 8), np.float32), y=np.array([0, 1]))
    with pytest.raises(PeruError, match="uint8"):
        load_task_data(DataRef("npz", tmp_path / "float.npz"), ["a", "b"], 8)
    np.savez(tmp_path / "nolabels.npz", x=_images(2))
    with pytest.raises(PeruError, match="'y'"):
        load_task_data(DataRef("npz", tmp_path / "nolabels.npz"), ["a", "b"], 8)
