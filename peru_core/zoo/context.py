"""The :class:`~peru_core.merging.registry.MergeContext` of a zoo: Fisher diagonals and RegMean Gram matrices, and
for AdaMerging a differentiable forward on unlabelled test images.

Both statistics use each task's validation images (never its labels, never the test set), as in Fisher merging
(Matena & Raffel, https://arxiv.org/abs/2111.09832) and RegMean (Jin et al., https://arxiv.org/abs/2212.09849),
the data-driven merges PERU (https://arxiv.org/abs/2310.01886) compares against.

- Fisher: the diagonal of the model's own Fisher information,
  ``F = 1/N sum_n (d/dtheta log p(y_n | x_n))^2`` with ``y_n`` drawn from the model's predicted distribution
  ``p(. | x_n)`` (one seeded Monte-Carlo label per image: unbiased for the true Fisher, one backward per image),
  computed with per-sample gradients (``torch.func``).
- Grams: ``X^T X`` of the inputs of every linear map of the tuned part, summed over images and token positions.
  ``nn.MultiheadAttention`` holds a packed ``in_proj_weight`` and calls no ``nn.Linear``, so a pre-hook on the
  attention module takes its input (for ``in_proj_weight``) and recomputes the attention output that feeds
  ``out_proj`` (for ``out_proj.weight``).
- AdaMerging (Yang et al., https://arxiv.org/abs/2310.02575) trains its coefficients at test time: shuffled batches
  of each task's test images (the labels are dropped here, never handed out) and a functional forward
  (``torch.func.functional_call``) of the image tower and the task's frozen head, differentiable in the tuned
  tensors it is given.
"""
from __future__ import annotations

import hashlib
import warnings
from typing import Callable, Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from peru_core.errors import PeruError
from peru_core.types import StateDict
from peru_core.zoo.runtime import TaskRef, ZooRuntime


def fingerprint(sd: StateDict) -> str:
    """A content hash of a state dict (cache key: the same weights give the same statistics)."""
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(sd):
        t = sd[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def mha_context(mha: torch.nn.MultiheadAttention, x: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Self-attention of ``x`` (batch-first B x L x D) before ``out_proj``: the input of ``mha.out_proj``."""
    b, n, d = x.shape
    h = mha.num_heads
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = ~attn_mask  # nn.MultiheadAttention: True = masked out; SDPA: True = attend
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.transpose(1, 2).reshape(b, n, d)


class _ImageLogits(torch.nn.Module):
    """``normalize(encode_image(x)) @ head.T`` as a module, so ``torch.func.functional_call`` can swap weights."""

    def __init__(self, model: torch.nn.Module, head: torch.Tensor) -> None:
        super().__init__()
        self.m = model
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.m.encode_image(x).float(), dim=-1) @ self.head.T


class ZooContext:
    """Fisher diagonals and Gram matrices on a zoo's validation sets, cached by (task, samples, weights)."""

    def __init__(self, runtime: ZooRuntime, seed: int = 0, chunk: Optional[int] = None) -> None:
        self.rt = runtime
        self.seed = seed
        self.chunk = chunk
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}

    def _samples(self, task: TaskRef, samples: int) -> torch.Tensor:
        x, _ = self.rt.data(task, "validation")
        return x[: max(1, int(samples))]  # at most the validation set's size

    def _cached(self, kind: str, task: TaskRef, sd: StateDict, samples: int,
                fn: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        key = (kind, self.rt.spec(task).name, int(samples), fingerprint(sd))
        if key not in self._cache:
            self._cache[key] = fn()
        return dict(self._cache[key])

    # --- Fisher ------------------------------------------------------------------------------------------
    def fisher(self, task: TaskRef, state_dict: StateDict, samples: int) -> StateDict:
        """Diagonal Fisher of every tuned tensor (same keys and shapes as the tuned part, float32, CPU)."""
        return self._cached("fisher", task, state_dict, samples, lambda: self._fisher(task, state_dict, samples))

    def sample_labels(self, task: TaskRef, x: torch.Tensor) -> torch.Tensor:
        """One label per image drawn from the loaded model's predictive distribution (seeded per task)."""
        rt = self.rt
        head = rt.head(task)
        gen = torch.Generator().manual_seed(self.seed + 7919 * rt.zoo.task_names.index(rt.spec(task).name))
        with torch.no_grad():
            logits = torch.cat([F.normalize(rt.model.encode_image(x[i:i + 256]).float(), dim=-1) @ head.T
                                for i in range(0, len(x), 256)])
        return torch.multinomial(logits.softmax(-1).cpu(), 1, generator=gen)[:, 0].to(x.device)

    def _fisher(self, task: TaskRef, state_dict: StateDict, samples: int) -> StateDict:
        rt = self.rt
        x = self._samples(task, samples)
        head = rt.head(task).clone()  # a normal tensor: inference tensors cannot take part in autograd
        with rt.lock:
            wrapper = _ImageLogits(rt.load(state_dict), head)
            params = {f"m.{k}": p.detach() for k, p in wrapper.m.named_parameters() if k.startswith(rt.prefix)}
            y = self.sample_labels(task, x)

            y = F.one_hot(y, head.shape[0]).float()  # a one-hot row: indexing by a vmapped label is not allowed

            def log_p(p: dict, x1: torch.Tensor, y1: torch.Tensor) -> torch.Tensor:
                return (F.log_softmax(functional_call(wrapper, p, (x1[None],)), dim=-1)[0] * y1).sum()

            per_sample = vmap(grad(log_p), in_dims=(None, 0, 0))
            n_params = sum(p.numel() for p in params.values())
            chunk = self.chunk or max(1, min(64, int(2e8 // max(1, n_params))))  # bounds memory: chunk x params
            acc = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
            for i in range(0, len(x), chunk):
                # vmap has no batching rule for the fused attention kernels and would loop over samples; the
                # math kernel is plain matmuls and softmax (same values, 3-8x faster here)
                with warnings.catch_warnings(), sdpa_kernel(SDPBackend.MATH):
                    warnings.filterwarnings("ignore", message=".*performance drop.*")
                    g = per_sample(params, x[i:i + chunk], y[i:i + chunk])
                for k in acc:
                    acc[k].add_(g[k].float().pow(2).sum(0))
        return {k[2:]: (v / len(x)).cpu() for k, v in acc.items()}

    # --- Gram matrices -----------------------------------------------------------------------------------
    def grams(self, task: TaskRef, state_dict: StateDict, samples: int) -> dict[str, torch.Tensor]:
        """``X^T X`` (in x in, float64 sums over images and tokens) per linear weight of the tuned part."""
        return self._cached("grams", task, state_dict, samples, lambda: self._grams(task, state_dict, samples))

    def _grams(self, task: TaskRef, state_dict: StateDict, samples: int) -> dict[str, torch.Tensor]:
        rt = self.rt
        x = self._samples(task, samples)
        out: dict[str, torch.Tensor] = {}

        def add(key: str, inp: torch.Tensor) -> None:
            flat = inp.detach().reshape(-1, inp.shape[-1]).double()
            g = flat.T @ flat
            out[key] = out[key] + g if key in out else g

        hooks = []
        with rt.lock:
            model = rt.load(state_dict)
            for name, mod in model.named_modules():
                if isinstance(mod, torch.nn.MultiheadAttention) and f"{name}.in_proj_weight".startswith(rt.prefix):
                    def pre(m, args, kwargs, name=name):
                        q = args[0] if args else kwargs["query"]
                        k = args[1] if len(args) > 1 else kwargs.get("key", q)
                        if k is not q or not m._qkv_same_embed_dim or m.bias_k is not None:
                            raise PeruError(f"RegMean needs plain self-attention in {name!r}; this model's "
                                            "attention is not supported.")
                        q = q if m.batch_first else q.transpose(0, 1)
                        add(f"{name}.in_proj_weight", q)
                        add(f"{name}.out_proj.weight", mha_context(m, q, kwargs.get("attn_mask")))
                    hooks.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
                elif isinstance(mod, torch.nn.Linear) and f"{name}.weight".startswith(rt.prefix):
                    hooks.append(mod.register_forward_pre_hook(lambda m, args, name=name: add(f"{name}.weight",
                                                                                                args[0])))
            try:
                with torch.no_grad():
                    for i in range(0, len(x), 256):
                        model.encode_image(x[i:i + 256])
            finally:
                for h in hooks:
                    h.remove()
        return {k: v.cpu() for k, v in out.items()}

    # --- AdaMerging: unlabelled test images, differentiable logits ---------------------------------------
    def test_batches(self, task: TaskRef, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        """Endless batches of ``batch_size`` test images of ``task`` (no labels), like a shuffled DataLoader that
        restarts: a new seeded permutation each epoch, the last batch of an epoch possibly smaller."""
        x, _ = self.rt.data(task, "test")  # the labels stay here
        n, batch_size = len(x), max(1, int(batch_size))
        gen = torch.Generator().manual_seed(int(seed) + 7919 * self.rt.zoo.task_names.index(self.rt.spec(task).name))
        while True:
            order = torch.randperm(n, generator=gen).to(x.device)
            for i in range(0, n, batch_size):
                yield x[order[i:i + batch_size]]

    def logits_fn(self, task: TaskRef) -> Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]:
        """``f(tuned, images)``: logits of ``images`` (``normalize(image features) @ head.T``, the head scaled by
        CLIP's logit scale) with the tuned tensors ``tuned`` swapped in by ``functional_call``, differentiable in
        them; tuned keys not given take the base value."""
        rt = self.rt
        head = rt.head(task).clone()  # a normal tensor: inference tensors cannot take part in autograd
        base = rt.base_state()

        def forward(tuned: Mapping[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
            params = {f"m.{k}": v.to(rt.device) for k, v in {**base, **tuned}.items()}
            with rt.lock:  # the swap is on the shared model: no other thread may use it meanwhile
                return functional_call(_ImageLogits(rt.model, head), params, (images.to(rt.device),))

        return forward
