"""Model layer: custom open_clip configs, offline creation, zero-shot heads (task-vectors protocol)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peru_core.errors import PeruError
from peru_core.models import create_clip, get_tokenizer, image_size, register_model_config, zero_shot_head
from tiny_zoo import ARCH, TINY_CONFIG


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_clip(ARCH, TINY_CONFIG), get_tokenizer(ARCH)


def test_custom_config_builds_the_named_architecture(tiny):
    model, tok = tiny
    assert image_size(model) == 8
    assert model.visual.conv1.weight.shape == (32, 3, 4, 4)
    assert len(model.visual.transformer.resblocks) == 1
    assert tok(["a photo of a dog."]).shape == (1, TINY_CONFIG["text_cfg"]["context_length"])
    assert not model.training


def test_registering_the_same_config_twice_is_a_no_op_and_builtin_names_are_protected():
    register_model_config(ARCH, TINY_CONFIG)
    register_model_config(ARCH, dict(TINY_CONFIG))
    with pytest.raises(PeruError, match="already an open_clip model"):
        register_model_config("ViT-B-32", TINY_CONFIG)
    with pytest.raises(PeruError, match="embed_dim"):
        register_model_config("peru-broken", {"vision_cfg": {}})


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(PeruError, match="Unknown architecture"):
        create_clip("no-such-net", None)


def test_zero_shot_head_matches_the_task_vectors_formula(tiny):
    model, tok = tiny
    classes, templates = ["cat", "dog", "bird"], ["a photo of a {}.", "a drawing of a {}."]
    head = zero_shot_head(model, tok, classes, templates, "cpu")
    assert head.shape == (3, TINY_CONFIG["embed_dim"])
    with torch.no_grad():
        ref = []
        for c in classes:
            e = F.normalize(model.encode_text(tok([t.format(c) for t in templates])), dim=-1).mean(0)
            ref.append(e / e.norm())
        ref = torch.stack(ref) * model.logit_scale.exp()
    torch.testing.assert_close(head, ref)
    # every row has the norm of the logit scale (normalized, then scaled)
    torch.testing.assert_close(head.norm(dim=-1), model.logit_scale.exp().expand(3))


def test_zero_shot_head_needs_classes_and_templates(tiny):
    model, tok = tiny
    with pytest.raises(PeruError):
        zero_shot_head(model, tok, [], ["a {}."], "cpu")
