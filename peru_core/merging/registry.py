"""The merge registry: a method is added in one place, and the UI builds its sliders from it.

Usage (one file per method in ``peru_core/merging/``)::

    @merge_method("ties", label="TIES-Merging", paper="https://arxiv.org/abs/2306.01708",
                  params=(Param("k", 20.0, 1.0, 100.0, "percent of each task vector kept", step=1.0,
                                label="Kept k", unit="%"),
                          Param("lam", 1.0, 0.0, 3.0, "scale of the merged task vector", label="Scaling λ")))
    def ties(base, finetuned, *, k, lam, context=None, on_progress=None, device=None): ...

A parameter is a number (a slider) or, built with :meth:`Param.choice`, one of a few named options (a selectbox;
e.g. TIES's conventions). Methods that need a model and data declare ``needs=("fisher",)``, ``("grams",)`` (Fisher,
RegMean: validation images) or ``("test_images",)`` (AdaMerging, which also sets ``test_time=True``: it trains on
the unlabelled test images) and receive a :class:`MergeContext`; the others get ``context=None``. ``device`` is
where a method may run its compute-bound kernels (resolved before the call: the GPU when there is one); a
memory-bound method keeps to the host and ignores it (see :mod:`peru_core.device`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence

import torch

from peru_core.device import DeviceLike, resolve_device
from peru_core.errors import PeruError
from peru_core.types import Progress, StateDict


@dataclass(frozen=True)
class Param:
    """A typed knob of a method; feeds CLI validation and the UI's widgets.

    A number (``default``, ``low``, ``high``: a slider) or, with ``choices``, one of a few named options (a
    ``default`` string among them: a selectbox; build it with :meth:`choice`)."""

    name: str
    default: float | str
    low: float
    high: float
    help: str
    step: float = 0.0  # 0: let the UI choose; integers default to 1
    integer: bool = False
    label: str = ""  # what a reader sees ("Scaling λ"); the name when empty
    unit: str = ""  # "%", "images", "×" ...: shown with the label and the value
    choices: tuple[str, ...] = ()  # a choice parameter's options (what the CLI and the spec key hold)
    choice_labels: tuple[str, ...] = ()  # what a reader sees for each choice (the choice itself when empty)
    aliases: tuple[tuple[str, str], ...] = ()  # (other name, choice) accepted on input, e.g. a tool's name

    @staticmethod
    def choice(name: str, default: str, choices: Sequence[str], help: str, *, label: str = "",
               labels: Sequence[str] = (), aliases: Mapping[str, str] | None = None) -> "Param":
        """A parameter taking one of ``choices`` (``labels``: how the UI names each; ``aliases``: other names
        accepted for a choice, e.g. ``{"fusionbench": "majority"}``)."""
        choices, aliases = tuple(choices), tuple((aliases or {}).items())
        if default not in choices or (labels and len(labels) != len(choices)) or \
                any(c not in choices for _, c in aliases):
            raise ValueError(f"choice parameter {name!r}: the default and aliases must name choices, and labels "
                             "be one per choice")
        return Param(name, default, 0.0, 0.0, help, label=label, choices=choices, choice_labels=tuple(labels),
                     aliases=aliases)

    @property
    def is_choice(self) -> bool:
        return bool(self.choices)

    def choice_label(self, value: str) -> str:
        """How the UI names ``value`` (its label, else the value itself)."""
        if self.choice_labels and value in self.choices:
            return self.choice_labels[self.choices.index(value)]
        return value

    @property
    def title(self) -> str:
        """The label with its unit, e.g. ``Kept k (%)`` (the CLI keeps the short ``name``)."""
        label = self.label or self.name
        return f"{label} ({self.unit})" if self.unit else label

    @property
    def value_format(self) -> str:
        """A printf format for the value with its unit (``%d%%``, ``%.2f×``, ``%d images``)."""
        unit = {"%": "%%", "": ""}.get(self.unit, (" " if self.unit[:1].isalpha() else "") + self.unit)
        if self.integer:
            return "%d" + unit
        step = self.step or (self.high - self.low) / 100.0
        digits = 0 if float(step).is_integer() else max(0, min(4, len(f"{step:g}".split(".")[-1])))
        return f"%.{digits}f" + unit

    def check(self, value: Any) -> float | int | str:
        """Coerce and check ``value`` (in range, or one of the choices); a one-sentence PeruError otherwise."""
        if self.choices:
            value = dict(self.aliases).get(str(value), str(value))
            if value not in self.choices:
                names = ", ".join((*self.choices, *(a for a, _ in self.aliases)))
                raise PeruError(f"Parameter {self.name}={value!r} is not one of its choices; give one of: "
                                f"{names} ({self.help}).")
            return value
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise PeruError(f"Parameter {self.name}={value!r} is not a number; give a value in "
                            f"[{self.low:g}, {self.high:g}].") from None
        if not (self.low <= v <= self.high) or v != v:
            raise PeruError(f"Parameter {self.name}={value} is out of range; give a value in "
                            f"[{self.low:g}, {self.high:g}] ({self.help}).")
        if self.integer:
            if v != int(v):
                raise PeruError(f"Parameter {self.name}={value} must be a whole number.")
            return int(v)
        return v


class MergeContext(Protocol):
    """Model- and data-driven statistics (implemented with the zoo, :class:`peru_core.zoo.context.ZooContext`):
    Fisher merging and RegMean use validation images; AdaMerging the unlabelled test images."""

    def fisher(self, task: int, state_dict: StateDict, samples: int) -> StateDict:
        """Diagonal Fisher of the tuned tensors of ``state_dict`` on ``samples`` validation images of ``task``."""
        ...

    def grams(self, task: int, state_dict: StateDict, samples: int) -> dict[str, torch.Tensor]:
        """``X^T X`` of the inputs of every linear layer, keyed by the layer's weight name (``...weight``)."""
        ...

    def test_batches(self, task: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
        """An endless stream of ``batch_size`` test images of ``task`` (never their labels), reshuffled each epoch
        from ``seed``, on the model's device (``needs=("test_images",)``)."""
        ...

    def logits_fn(self, task: int) -> Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]:
        """``f(tuned, images) -> logits``: the image tower with the tuned tensors ``tuned`` (a functional call,
        differentiable in them) and ``task``'s frozen head."""
        ...


MergeFn = Callable[..., StateDict]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    label: str
    paper: str
    params: tuple[Param, ...]
    fn: MergeFn
    needs: tuple[str, ...] = ()  # what it takes from a MergeContext: "fisher", "grams", "test_images"
    summary: str = ""
    # bump when a change alters this method's output: stored results keyed by the old version are recomputed
    # (see peru_core.engine and docs/engine.md, "Engine versions")
    version: str = "1"
    # it trains on the (unlabelled) test images it is then evaluated on: the UI and CLI say so next to it
    test_time: bool = False

    @property
    def needs_validation(self) -> bool:
        """It computes statistics on validation images (Fisher, RegMean): only zoos with validation sets run it."""
        return bool(set(self.needs) & {"fisher", "grams"})

    def defaults(self) -> dict[str, float | int | str]:
        return {p.name: p.default for p in self.params}

    def check_params(self, params: Mapping[str, Any]) -> dict[str, float | int | str]:
        """Fill defaults, reject unknown names, range-check values (choice parameters: one of their choices)."""
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            names = ", ".join(known) or "none"
            raise PeruError(f"{self.label} has no parameter {unknown[0]!r}; its parameters are: {names}.")
        return {n: p.check(params.get(n, p.default)) for n, p in known.items()}

    def __call__(self, base: StateDict, finetuned: Sequence[StateDict], *, context: Optional[MergeContext] = None,
                 on_progress: Progress = None, device: DeviceLike = None, **params: Any) -> StateDict:
        checked = self.check_params(params)
        if self.needs and context is None:
            data = "validation images" if self.needs_validation else "unlabelled test images"
            raise PeruError(f"{self.label} needs a model and {data} ({', '.join(self.needs)}); "
                            "run it on a zoo, not on bare checkpoints.")
        if not finetuned:
            raise PeruError("No fine-tuned models were given; pass at least one task.")
        return self.fn(base, list(finetuned), context=context, on_progress=on_progress,
                       device=resolve_device(device), **checked)


_REGISTRY: dict[str, MergeMethod] = {}


def merge_method(name: str, *, label: str, paper: str, params: tuple[Param, ...] = (),
                 needs: tuple[str, ...] = (), summary: str = "", version: str = "1",
                 test_time: bool = False) -> Callable[[MergeFn], MergeFn]:
    """Register ``fn(base, finetuned, *, context, on_progress, device, **params) -> merged state dict``;
    ``version``: bump it whenever a change alters the method's output; ``test_time``: it trains on the unlabelled
    test images (AdaMerging), which the UI and CLI state next to it."""

    def wrap(fn: MergeFn) -> MergeFn:
        if name in _REGISTRY:
            raise RuntimeError(f"merge method {name!r} registered twice")
        doc_first = ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[name] = MergeMethod(name, label, paper, tuple(params), fn, tuple(needs), summary or doc_first,
                                      str(version), bool(test_time))
        return fn

    return wrap


def _load_all() -> None:
    # Importing the package imports every method module, which registers it.
    import peru_core.merging  # noqa: F401


def get_method(name: str) -> MergeMethod:
    _load_all()
    if name not in _REGISTRY:
        raise PeruError(f"Unknown merge method {name!r}; choose one of: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def list_methods() -> list[MergeMethod]:
    """All registered methods, in registration order."""
    _load_all()
    return list(_REGISTRY.values())
