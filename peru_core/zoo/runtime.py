"""A loaded zoo, ready to evaluate: one model, base weights read once, heads and test tensors cached.

Every reuse method of PERU (https://arxiv.org/abs/2310.01886) ends in "evaluate this tuned state dict on task t";
:class:`ZooRuntime` makes that call cheap: the state dict is copied into the existing parameters (no rebuild), the
frozen heads come from the never-tuned text tower once per task, and test sets are preprocessed once and kept (on
the GPU when there is one and they fit its share, in host memory otherwise; both bounded, least recently used
evicted first). The model (and open_clip, a 3 s import) is built on first use, so answering from the results store,
costs and specs need only the base checkpoint. Quick estimates (:mod:`peru_core.estimate`) evaluate a fixed
stratified subset of each test set, gathered once per task.
"""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from typing import Any, Optional, Sequence

import numpy as np
import torch

from peru_core.data import load_task_data
from peru_core import estimate as est
from peru_core.device import batch_size_for, check_precision, resolve_device
from peru_core.errors import PeruError
from peru_core.evaluate import accuracy_of, autocast, image_features, load_tuned, predict
from peru_core.io import load_lora_adapter, load_state_dict, read_file_header, validate_adapter
from peru_core.types import StateDict
from peru_core.zoo.manifest import TaskSpec, Zoo

TaskRef = int | str
DATA_GB = 4.0  # host memory for preprocessed test sets ($PERU_DATA_GB overrides)
GPU_DATA_SHARE = 0.25  # of the GPU's total memory, for test sets kept there


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class ZooRuntime:
    """Evaluate tuned state dicts (keys under ``zoo.tuned_prefix``) on the tasks of ``zoo``.

    Thread-safe: one lock serialises loads into the shared model. Returned state dicts are shared caches:
    treat them as read-only (build new tensors, never modify them in place).
    """

    def __init__(self, zoo: Zoo, device: Optional[str] = None, batch_size: Optional[int] = None, *,
                 content_hash: Optional[str] = None, precision: str = "float32") -> None:
        """``content_hash``: the zoo's :meth:`Zoo.content_hash` when the caller has it (hashing reads every file).
        ``batch_size``: images per forward pass (default: :func:`peru_core.device.batch_size_for` the device,
        measured on first use). ``precision``: "float32", or "bf16" where the device computes it natively
        (results are keyed by it)."""
        self.zoo = zoo
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device)
        self._batch_size = batch_size
        self.prefix = zoo.tuned_prefix
        self._lock = threading.RLock()
        self._content_hash = content_hash
        stored = load_state_dict(zoo.base, keys=self._tuned)  # the tuned part only; the model reads the rest
        if not stored:
            raise PeruError(f"No tensor of {zoo.base.name} starts with the zoo's tuned_prefix {self.prefix!r}; "
                            "fix zoo.json.")
        # what byte counts use: the tuned part's dtype as stored (float16 zoos store 2 bytes per value)
        self.stored_dtype: torch.dtype = next(iter(stored.values())).dtype
        # the tuned part as the model holds it (open_clip builds float32 models): floats widened
        self._base: StateDict = {k: v.float() if v.is_floating_point() else v for k, v in stored.items()}
        self._model: Optional[torch.nn.Module] = None
        self._tokenizer: Any = None
        self._image_size = 0
        self._heads: dict[str, torch.Tensor] = {}
        self._data: OrderedDict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._subsets: dict[tuple[str, str], tuple[np.ndarray, torch.Tensor, torch.Tensor]] = {}
        self._host_budget = int(float(os.environ.get("PERU_DATA_GB", DATA_GB)) * 2**30)
        self._gpu_budget = (int(torch.cuda.get_device_properties(self.device).total_memory * GPU_DATA_SHARE)
                            if self.device.type == "cuda" else 0)
        self._finetuned: dict[str, StateDict] = {}
        self._adapters: dict[tuple[str, str], Any] = {}

    def _tuned(self, key: str) -> bool:
        return key.startswith(self.prefix)

    @property
    def content_hash(self) -> str:
        """SHA-256 over the zoo's files (computed on first use unless given): results are keyed by it."""
        if self._content_hash is None:
            self._content_hash = self.zoo.content_hash()
        return self._content_hash

    @property
    def model_params(self) -> int:
        """Values in the base checkpoint (the whole model's parameter count), from its header: no model is built."""
        header = read_file_header(self.zoo.base, self.zoo.base.name)
        return sum(math.prod(v["shape"]) for k, v in header.items() if not k.startswith("__"))

    # --- the model ---------------------------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        """The zoo's CLIP on the runtime's device with the base weights (built on first use)."""
        return self._built()[0]

    @property
    def tokenizer(self) -> Any:
        return self._built()[1]

    @property
    def image_size(self) -> int:
        return self._built()[2]

    def _built(self) -> tuple[torch.nn.Module, Any, int]:
        with self._lock:
            if self._model is None:
                self._build_model()
            return self._model, self._tokenizer, self._image_size  # type: ignore[return-value]

    def _build_model(self) -> None:
        from peru_core.models import create_clip, get_tokenizer, image_size  # open_clip: only when evaluating

        model = create_clip(self.zoo.architecture, self.zoo.model_config, self.device)
        rest = load_state_dict(self.zoo.base, keys=lambda k: not self._tuned(k))
        missing, unexpected = model.load_state_dict({**rest, **self._base}, strict=False)
        if missing or unexpected:
            what = f"lacks {missing[0]!r}" if missing else f"has an unexpected key {unexpected[0]!r}"
            raise PeruError(f"Base checkpoint {self.zoo.base.name} {what} for architecture "
                            f"{self.zoo.architecture!r}; use weights saved from that architecture.")
        model.requires_grad_(False)
        self._tokenizer = get_tokenizer(self.zoo.architecture)
        self._image_size = image_size(model)
        self._model = model

    # --- tasks and checkpoints ---------------------------------------------------------------------------
    def spec(self, task: TaskRef) -> TaskSpec:
        """The manifest entry of ``task`` (its name or index)."""
        if isinstance(task, int):
            if not 0 <= task < len(self.zoo.tasks):
                raise PeruError(f"Task index {task} is out of range; the zoo has {len(self.zoo.tasks)} tasks.")
            return self.zoo.tasks[task]
        return self.zoo.task(task)

    @property
    def tuned_keys(self) -> list[str]:
        return list(self._base)

    def base_state(self) -> StateDict:
        """The pre-trained tuned part theta_0 (CPU float tensors, shared: do not modify in place)."""
        return dict(self._base)

    def finetuned(self, task: TaskRef) -> StateDict:
        """The full fine-tune theta_t of ``task`` (only the tuned keys; cached; do not modify in place)."""
        spec = self.spec(task)
        if spec.name not in self._finetuned:
            if spec.finetuned is None:
                raise PeruError(f"Task {spec.name!r} has no full fine-tune in this zoo; add 'finetuned' to zoo.json.")
            sd = load_state_dict(spec.finetuned)
            missing = [k for k in self._base if k not in sd]
            extra = [k for k in sd if k not in self._base]
            if missing or extra:
                what = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, outside the tuned part"
                raise PeruError(f"Fine-tune {spec.finetuned.name} of task {spec.name!r} {what}; save exactly the "
                                f"'{self.prefix}' tensors of the zoo's architecture.")
            self._finetuned[spec.name] = {k: sd[k].float() for k in self._base}
        return dict(self._finetuned[spec.name])

    def adapter(self, task: TaskRef, kind: str = "lora") -> Any:
        """The adapter of ``task`` (``kind`` "lora" or "llora", the manifest's keys) as read by
        :func:`peru_core.io.load_lora_adapter` (cached). An L-LoRA adapter is an ordinary PEFT adapter."""
        spec = self.spec(task)
        if (kind, spec.name) not in self._adapters:
            path = getattr(spec, kind)
            if path is None:
                what = "LoRA" if kind == "lora" else "L-LoRA"
                raise PeruError(f"Task {spec.name!r} has no {what} adapter in this zoo; add {kind!r} to zoo.json.")
            adapter = load_lora_adapter(path, name=spec.name, base_keys=self._base)
            validate_adapter(self._base, adapter)
            self._adapters[(kind, spec.name)] = adapter
        return self._adapters[(kind, spec.name)]

    # --- data and heads ----------------------------------------------------------------------------------
    def head(self, task: TaskRef) -> torch.Tensor:
        """The frozen zero-shot head of ``task`` (classes x embed_dim, on the runtime's device)."""
        spec = self.spec(task)
        if spec.name not in self._heads:
            from peru_core.models import zero_shot_head

            with self._lock:  # the text tower is never tuned, so the visual weights loaded now do not matter
                self._heads[spec.name] = zero_shot_head(self.model, self.tokenizer, spec.classes, spec.templates,
                                                        self.device)
        return self._heads[spec.name]

    def data(self, task: TaskRef, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed images and labels of ``split`` ("test" or "validation"), preprocessed once and kept (GPU
        first, then host memory, each within its budget; the least recently used sets are evicted first)."""
        spec = self.spec(task)
        key = (spec.name, split)
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        ref = spec.test if split == "test" else spec.validation if split == "validation" else None
        if ref is None:
            raise PeruError(f"Task {spec.name!r} has no {split} data; add '{split}' to zoo.json.")
        x, y = load_task_data(ref, spec.classes, self.image_size, mean=self.zoo.image_mean or None,
                              std=self.zoo.image_std or None)
        with self._lock:
            if key in self._data:  # another thread preprocessed it meanwhile
                return self._data[key]
            on_gpu = sum(_nbytes(v[0]) for v in self._data.values() if v[0].device.type == "cuda")
            if self.device.type == "cuda" and on_gpu + _nbytes(x) <= self._gpu_budget:
                x = x.to(self.device)  # evaluation then copies nothing per batch
            self._data[key] = (x, y)
            self._evict()
            return self._data[key]

    def _evict(self) -> None:
        """Drop the least recently used host-memory sets (and their subsets) beyond the budget; the newest stays."""
        def host() -> int:
            return sum(_nbytes(x) for x, _ in self._data.values() if x.device.type == "cpu")

        while len(self._data) > 1 and host() > self._host_budget:
            key = next(iter(self._data))
            del self._data[key]
            self._subsets.pop(key, None)

    def subset(self, task: TaskRef, split: str = "test") -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """The estimate subset of ``task``'s ``split`` set: (indices into the full set, its images, its labels);
        the fixed seeded stratified pick of :func:`peru_core.estimate.stratified_subset`, gathered once."""
        x, y = self.data(task, split)
        key = (self.spec(task).name, split)
        with self._lock:
            if key not in self._subsets:
                index = est.stratified_subset(y.numpy(), est.DEFAULT_FRACTION, est.DEFAULT_SEED)
                pick = torch.from_numpy(index)
                self._subsets[key] = (index, x[pick.to(x.device)], y[pick])
            return self._subsets[key]

    @property
    def batch_size(self) -> int:
        """Images per forward pass: given, ``$PERU_BATCH``, or what the device's memory allows (measured once)."""
        if self._batch_size is None:
            self._batch_size = batch_size_for(self.device, self._bytes_per_image())
        return self._batch_size

    def _bytes_per_image(self) -> int:
        """Peak GPU memory of one image's forward pass, measured on a small batch (0 on the CPU: not needed)."""
        if self.device.type != "cuda" or os.environ.get("PERU_BATCH"):
            return 0
        n = 16
        x = torch.zeros(n, 3, self.image_size, self.image_size, device=self.device)
        with self._lock, torch.inference_mode(), autocast(self.device, self.precision):
            torch.cuda.synchronize(self.device)
            start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.model.encode_image(x)
            peak = torch.cuda.max_memory_allocated(self.device)
        return max(1, (peak - start) // n)

    # --- evaluation --------------------------------------------------------------------------------------
    def load(self, tuned: StateDict) -> torch.nn.Module:
        """Copy ``tuned`` into the model (missing tuned keys take the base value) and return the model.
        Hold ``runtime.lock`` while using the model after this call."""
        load_tuned(self.model, tuned, self.prefix, self._base)
        return self.model

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def predictions(self, tuned: StateDict, task: TaskRef, split: str = "test") -> np.ndarray:
        """Predicted class index per image of ``task``'s ``split`` set."""
        x, _ = self.data(task, split)
        return self._predict(tuned, task, x)

    def _predict(self, tuned: StateDict, task: TaskRef, x: torch.Tensor) -> np.ndarray:
        head, batch = self.head(task), self.batch_size
        with self._lock:
            self.load(tuned)
            return predict(self.model, head, x, batch_size=batch, precision=self.precision).numpy()

    def estimate(self, tuned: StateDict, task: TaskRef, split: str = "test") -> est.Estimate:
        """The quick estimate of ``tuned``'s accuracy on ``task``: evaluated on the stratified subset only."""
        index, x, y_sub = self.subset(task, split)
        _, y = self.data(task, split)
        ok = self._predict(tuned, task, x) == y_sub.numpy()
        return est.estimate_of(ok, y.numpy(), index, est.DEFAULT_FRACTION, est.DEFAULT_SEED)

    def accuracy(self, tuned: StateDict, task: TaskRef, split: str = "test") -> float:
        """Top-1 accuracy in [0, 1] of ``tuned`` on ``task``'s held-out ``split`` set."""
        _, y = self.data(task, split)
        return accuracy_of(torch.from_numpy(self.predictions(tuned, task, split)), y)

    def features(self, tuned: StateDict, task: TaskRef, limit: Optional[int] = None,
                 split: str = "test", *, index: Optional[Sequence[int]] = None) -> tuple[np.ndarray, np.ndarray]:
        """Normalized image embeddings (N x D float32) and labels of the test images at ``index`` (default: all),
        or of the first ``limit`` of them; only those images are encoded."""
        x, y = self.data(task, split)
        if index is not None:
            pick = torch.as_tensor(np.asarray(index, dtype=np.int64))
            x, y = x[pick.to(x.device)], y[pick]
        if limit is not None:
            x, y = x[:limit], y[:limit]
        with self._lock:
            self.load(tuned)
            feats = image_features(self.model, x, batch_size=self.batch_size, device=self.device,
                                   precision=self.precision)
        return feats.cpu().numpy(), y.numpy()
