"""AdaMerging (issue 9, item 1) equals FusionBench's task-wise and layer-wise AdaMerging, and runs on the tiny zoo.

Reference, re-implemented below with the same operations in the same order (a tiny MLP "image tower", random
unlabelled images; both sides draw the same batches from one context):
  FB = tanganke/fusion_bench @ 54c9e8c9d9621620c720452cd8533332a32d3689
  fusion_bench/models/wrappers/task_wise_fusion.py::TaskWiseMergedModel (merge_weights: for each task, for each
  parameter, ``state_dict[name] + param * weight``; forward: ``functional_call`` of the pre-trained model),
  models/wrappers/layer_wise_fusion.py::LayerWiseMergedModel (the same with one weight per parameter tensor),
  method/adamerging/task_wise_adamerging.py::test_time_adaptation and layer_wise_adamerging.py (Adam on
  merge_weight; per step, per task: next shuffled test batch, entropy_loss, backward(retain_graph=True); then
  optimizer.step(), zero_grad(), merge_weights()), method/adamerging/entropy_loss.py, and
  mixins/clip_classification.py::compute_logits (normalised image embeddings, ``text @ image.T * logit_scale``,
  transposed); config/method/adamerging/clip.yaml (clamp_weights false, init 0.3, lr 1e-3, batch 16).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from peru_core import experiments as ex
from peru_core.errors import PeruError
from peru_core.merging import get_method
from peru_core.merging.adamerging import STEPS_DEFAULT, adamerging_coefficients, entropy_loss, merge_with
from peru_core.spec import RunSpec
from peru_core.zoo import load_zoo
from peru_core.zoo.runtime import ZooRuntime

T, CLASSES, SCALE = 3, 4, 20.0


def _tower() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 5))


class TinyContext:
    """A MergeContext over a tiny tower: seeded shuffled batches of random "test images", frozen per-task heads."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.tower = _tower()
        self.images = [torch.randn(37, 8, generator=g) for _ in range(T)]
        heads = [torch.randn(CLASSES, 5, generator=g) for _ in range(T)]
        self.heads = [h / h.norm(dim=-1, keepdim=True) for h in heads]

    def base(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.tower.state_dict().items()}

    def finetuned(self, seed: int = 1) -> list[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        return [{k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in self.base().items()} for _ in range(T)]

    def test_batches(self, task: int, batch_size: int, seed: int):
        gen = torch.Generator().manual_seed(seed + 101 * task)
        x = self.images[task]
        while True:  # a shuffled loader that restarts, as FusionBench's InfiniteDataLoader
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), batch_size):
                yield x[order[i:i + batch_size]]

    def logits(self, task: int, embeds: torch.Tensor) -> torch.Tensor:
        """FB compute_logits: normalise, ``text_embeds @ image_embeds.T * logit_scale``, transposed."""
        embeds = embeds / embeds.norm(p=2, dim=-1, keepdim=True)
        return (torch.matmul(self.heads[task], embeds.t()) * SCALE).t()

    def logits_fn(self, task: int):
        def forward(tuned, images):
            return self.logits(task, functional_call(self.tower, dict(tuned), (images,)))

        return forward


# --- FB: wrappers/{task,layer}_wise_fusion.py + adamerging test_time_adaptation ---------------------------------
def fb_entropy_loss(logits):
    probs = torch.softmax(logits, dim=-1)
    return -torch.sum(probs * torch.log(probs + 1e-8), dim=-1).mean()


class FBMergedModel(nn.Module):
    """TaskWiseMergedModel (weight shape (T,)) / LayerWiseMergedModel ((T, L)), clamp_weights=False."""

    def __init__(self, weight, pretrained, finetuned_models):
        super().__init__()
        self.merge_weight = nn.Parameter(weight, requires_grad=True)
        for name, param in pretrained.named_parameters():
            for m in finetuned_models:
                sub = dict(m.named_parameters())[name]
                sub.data = sub - param
        self.pretrained_model = pretrained.requires_grad_(False)
        for m in finetuned_models:
            m.requires_grad_(False)
        self.task_vectors = nn.ModuleList(finetuned_models)
        self._merged_state_dict = None

    def merge_weights(self):
        state_dict = self.pretrained_model.state_dict(keep_vars=True)
        for weight, task_vector in zip(self.merge_weight, self.task_vectors):
            if weight.dim() == 0:  # task-wise
                for name, param in task_vector.named_parameters():
                    state_dict[name] = state_dict[name] + param * weight
            else:  # layer-wise
                for w, (name, param) in zip(weight, task_vector.named_parameters()):
                    state_dict[name] = state_dict[name] + param * w
        self._merged_state_dict = state_dict
        return state_dict

    def forward(self, x):
        if self._merged_state_dict is None:
            self.merge_weights()
        return functional_call(self.pretrained_model, self._merged_state_dict, (x,), tie_weights=True, strict=False)


def fb_adamerging(ctx, base, fts, granularity, steps, lr, batch, init, seed):
    pretrained = _tower()
    pretrained.load_state_dict(base)
    models = []
    for sd in fts:
        m = copy.deepcopy(pretrained)
        m.load_state_dict(sd)
        models.append(m)
    L = len(list(pretrained.parameters()))
    weight = torch.full((T,) if granularity == "task" else (T, L), init, dtype=torch.float32)
    module = FBMergedModel(weight, pretrained, models)
    optimizer = torch.optim.Adam([module.merge_weight], lr=lr)
    loaders = [ctx.test_batches(t, batch, seed) for t in range(T)]  # functools.cache: one iterator per task
    module.train()
    module.merge_weights()
    for _ in range(steps):
        for t in range(T):
            logits = ctx.logits(t, module(next(loaders[t])))
            loss = fb_entropy_loss(logits)
            loss.backward(retain_graph=True)
        optimizer.step()
        optimizer.zero_grad()
        module.merge_weights()
    return module.merge_weight.detach(), {k: v.detach() for k, v in module._merged_state_dict.items()}


@pytest.mark.parametrize("granularity", ["task", "layer"])
@pytest.mark.parametrize("steps, lr, batch, init", [(5, 1e-3, 16, 0.3), (8, 5e-2, 7, 0.5), (3, 1e-2, 37, 0.0)])
def test_coefficients_and_merge_equal_fusionbench(granularity, steps, lr, batch, init):
    ctx = TinyContext()
    base, fts = ctx.base(), ctx.finetuned()
    ref_coef, ref_merged = fb_adamerging(ctx, base, fts, granularity, steps, lr, batch, init, seed=3)
    coef, history = adamerging_coefficients(base, fts, ctx, granularity=granularity, steps=steps, lr=lr,
                                            batch=batch, init=init, seed=3, device="cpu")
    assert coef.shape == ref_coef.shape and len(history) == steps
    assert torch.equal(coef, ref_coef), (coef - ref_coef).abs().max()  # same operations, same order: bit for bit
    assert not torch.allclose(coef, torch.full_like(coef, init))  # it did learn something
    merged = get_method("adamerging")(base, fts, context=ctx, device="cpu", granularity=granularity, steps=steps,
                                      lr=lr, batch=batch, init=init, seed=3)
    for k, v in ref_merged.items():
        assert merged[k].dtype == base[k].dtype
        assert torch.allclose(merged[k], v, rtol=0, atol=1e-6), (k, (merged[k] - v).abs().max())


def test_entropy_and_merge_helpers():
    logits = torch.randn(5, 7)
    assert torch.equal(entropy_loss(logits), fb_entropy_loss(logits))
    base = {"w": torch.ones(2, 2)}
    tvs = [{"w": torch.full((2, 2), 1.0)}, {"w": torch.full((2, 2), 2.0)}]
    assert torch.equal(merge_with(base, tvs, torch.tensor([0.5, 0.25]), ["w"])["w"], torch.full((2, 2), 2.0))


def test_the_history_goes_down_on_average():
    """Entropy minimisation: with a real learning rate the mean entropy over tasks falls."""
    ctx = TinyContext(seed=2)
    base, fts = ctx.base(), ctx.finetuned()
    _, history = adamerging_coefficients(base, fts, ctx, granularity="layer", steps=30, lr=5e-2, batch=37,
                                         init=0.3, seed=0, device="cpu")
    assert history[-1] < history[0]


def test_registry_entry_says_it_trains_at_test_time():
    m = get_method("adamerging")
    assert m.test_time and m.needs == ("test_images",) and not m.needs_validation
    assert m.defaults()["steps"] == STEPS_DEFAULT < 1000 and m.paper.startswith("https://arxiv.org/abs/2310.02575")
    with pytest.raises(PeruError, match="unlabelled test images"):
        m({"w": torch.zeros(2)}, [{"w": torch.ones(2)}])
    with pytest.raises(PeruError, match="not one of its choices"):
        RunSpec.make("merge", "full", "adamerging", {"granularity": "block"})


def test_on_the_tiny_zoo_through_run_spec(tiny_zoo_dir):
    """End to end on the zoo: ZooContext's unlabelled test batches and differentiable logits, a few steps."""
    rt = ZooRuntime(load_zoo(tiny_zoo_dir), "cpu")
    seen = []
    spec = RunSpec.make("merge", "full", "adamerging", {"steps": 3, "batch": 8, "granularity": "task"})
    assert dict(spec.params)["granularity"] == "task" and dict(spec.params)["steps"] == 3.0
    frame = ex.run_spec(rt, spec, on_progress=lambda f, msg: seen.append(msg))
    names = rt.zoo.task_names
    assert frame["task"].tolist() == names and frame["accuracy"].between(0, 1).all()
    assert any("training on test images): step 3/3" in s for s in seen), seen  # the merge's own progress bar
    merged = ex.task_model(rt, spec, 0)
    base = rt.base_state()
    tuned = rt.finetuned(names[0])
    assert set(tuned) <= set(merged) and all(merged[k].dtype == base[k].dtype for k in tuned)
    # theta_0 + sum_t lambda_t tau_t with the learned coefficients: lies in the span of the task vectors
    from peru_core.zoo.context import ZooContext

    coef, history = adamerging_coefficients(base, [rt.finetuned(n) for n in names], ZooContext(rt),
                                            granularity="task", steps=3, lr=1e-3, batch=8, init=0.3, seed=0,
                                            device="cpu")
    assert len(history) == 3 and coef.shape == (len(names),)
    k = next(iter(tuned))
    expect = base[k].float() + sum(float(c) * (rt.finetuned(n)[k].float() - base[k].float())
                                   for c, n in zip(coef, names))
    assert torch.allclose(merged[k].float(), expect, atol=1e-5)
