"""A one-time, explicit converter from pickled checkpoints (``torch.save``) to safetensors, without running them.

The classic task-vector checkpoints (used by PERU, https://arxiv.org/abs/2310.01886) are whole image-encoder modules
or state dicts saved with ``torch.save``: Python pickles. ``torch.load(..., weights_only=False)`` on such a file runs
whatever functions the pickle names, so a hostile file can take over the machine. Here the pickle is read by a
restricted unpickler: only torch's tensor-rebuild functions, dtypes, sizes and plain containers resolve to real
objects; every other class or function becomes an inert placeholder that records what the pickle passes to it and
never runs. A pickle that names an obviously dangerous callable (``os.system``, ``eval``, ``subprocess``...) is
refused outright. Tensors are then collected (a module's parameters and persistent buffers by their state-dict
names), renamed to open_clip's layout (see :mod:`peru_core.hf_clip`) and written atomically as safetensors.
"""
from __future__ import annotations

import builtins
import collections
import pickle
import threading
import types
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from peru_core import hf_clip
from peru_core.errors import PeruError
from peru_core.io import is_pickle, load_state_dict, save_state_dict
from peru_core.types import Progress, StateDict, report

RISK = ("A pickled checkpoint (.pt/.pth/.bin written by torch.save) is a program as much as data: loading it with "
        "torch.load can run any code its author chose. PERU Studio never does that: this converter reads the file "
        "with a restricted unpickler that only rebuilds tensors and plain containers and turns every other class "
        "or function into an inert placeholder, then writes the tensors as safetensors, a format that holds data "
        "only. Convert once, keep the .safetensors file, and delete the pickle if you did not make it yourself.")

# Modules whose callables have no business in a checkpoint: naming one is treated as an attack and refused.
# (Placeholders never run either way; refusing says plainly that the file is not an honest checkpoint.)
_DANGEROUS = {"os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty", "ctypes",
              "webbrowser", "pickle", "_pickle", "marshal", "code", "codeop", "types", "signal", "multiprocessing",
              "asyncio", "threading", "_thread", "http", "urllib", "requests", "pdb", "bdb", "platform", "timeit",
              "zipimport", "pkgutil", "torch.hub", "torch.serialization", "torch.jit", "torch.package"}
# Plain containers and scalars only (no bytes/bytearray/range: a pickled size could make them allocate terabytes).
_SAFE_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "slice", "complex", "int", "float", "bool", "str"}
# Resolved once here, so find_class never calls getattr on torch with a name from the file (no lazy imports).
_TORCH_DTYPES = {n: getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}


class Inert:
    """Stands in for a class or function a pickle names: it records arguments, state and items, and runs nothing."""

    _peru_global = "?"
    dump_patches = False  # read by torch's legacy loader

    def __new__(cls, *args: Any, **kwargs: Any) -> "Inert":
        obj = object.__new__(cls)
        object.__setattr__(obj, "_peru", {"args": args, "kwargs": kwargs, "state": None, "items": {}, "list": []})
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self._peru["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self._peru["items"][key] = value

    def append(self, value: Any) -> None:
        self._peru["list"].append(value)

    def extend(self, values: Any) -> None:
        self._peru["list"].extend(values)

    def __repr__(self) -> str:
        return f"<inert {self._peru_global}>"


def _tensor_v2(storage: Any, offset: int, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    # requires_grad, hooks and metadata are dropped on purpose: a checkpoint's numbers are all we keep.
    if not isinstance(storage, torch.storage.TypedStorage):
        raise PeruError("The checkpoint rebuilds a tensor from something that is not a storage; it is corrupt or "
                        "crafted, so it is refused.")
    return torch._utils._rebuild_tensor(storage, offset, tuple(size), tuple(stride))


def _parameter(data: Any, *_ignored: Any) -> Any:
    return data.detach() if isinstance(data, torch.Tensor) else data


def _from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    return func(*args)  # func came from find_class, so it is one of ours or inert; the subclass is dropped


def _latin1(text: Any, encoding: str = "latin1", *_ignored: Any) -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PeruError("The checkpoint asks for an unusual text decoding; it is refused.")
    return text.encode("latin1")  # how Python-2-era pickles store bytes


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _from_type_v2,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1,
    **{(m, n): getattr(builtins, n) for m in ("builtins", "__builtin__") for n in _SAFE_BUILTINS},
}


class RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` never imports: allowlisted names map to the safe objects above, dangerous ones are refused,
    everything else becomes a fresh :class:`Inert` subclass (its name is recorded for the report)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _TORCH_DTYPES:
            return _TORCH_DTYPES[name]
        qual = f"{module}.{name}"
        root = module.split(".")[0]
        _found().append(qual)
        if module in _DANGEROUS or root in _DANGEROUS or module in ("builtins", "__builtin__"):
            raise PeruError(f"The checkpoint asks to call {qual} while loading, which no checkpoint needs; it is "
                            "refused as hostile or corrupt (nothing was run and nothing was written).")
        return type(name if name.isidentifier() else "Inert", (Inert,), {"_peru_global": qual})


_LOCAL = threading.local()  # globals named by the pickle being read in this thread (torch.load hides the unpickler)


def _found() -> list[str]:
    if not hasattr(_LOCAL, "found"):
        _LOCAL.found = []
    return _LOCAL.found


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load accepts a "pickle module": ours exposes only the restricted Unpickler and load.
RESTRICTED_PICKLE = types.ModuleType("peru_restricted_pickle")
RESTRICTED_PICKLE.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
RESTRICTED_PICKLE.load = _restricted_load  # type: ignore[attr-defined]


def _collect(obj: Any, prefix: str, out: StateDict, seen: set[int], depth: int = 0) -> None:
    """Tensors reachable from ``obj``, named like ``state_dict()`` keys (modules: parameters, persistent buffers)."""
    if isinstance(obj, torch.Tensor):
        out.setdefault(prefix[:-1], obj)
        return
    if id(obj) in seen or depth > 200:
        return
    seen.add(id(obj))
    if isinstance(obj, Inert):
        state = obj._peru["state"]
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict state, slot state)
        if isinstance(state, dict) and ("_parameters" in state or "_modules" in state):
            skip = set(state.get("_non_persistent_buffers_set") or ())
            for field in ("_parameters", "_buffers"):
                for k, v in (state.get(field) or {}).items():
                    if v is not None and not (field == "_buffers" and k in skip):
                        _collect(v, f"{prefix}{k}.", out, seen, depth + 1)
            for k, v in (state.get("_modules") or {}).items():
                _collect(v, f"{prefix}{k}.", out, seen, depth + 1)
            return
        for part in (state, obj._peru["items"], obj._peru["list"]):
            _collect(part, prefix, out, seen, depth + 1)
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, (str, int)):
                _collect(v, f"{prefix}{k}.", out, seen, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _collect(v, f"{prefix}{i}.", out, seen, depth + 1)


def _looks_pickled(path: Path) -> bool:
    with open(path, "rb") as f:
        return is_pickle(f.read(9))  # a torch.save zip, or a raw pickle


def _check_archive(path: Path) -> None:
    if not path.is_file():
        raise PeruError(f"{path} does not exist; give the pickled checkpoint to convert.")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            raise PeruError(f"{path} is a TorchScript archive (it carries code); save a state dict instead.")
        if not any(n.endswith("data.pkl") for n in names):
            raise PeruError(f"{path} is a zip file but not a torch.save checkpoint.")


def read_pickled_checkpoint(path: str | Path) -> tuple[StateDict, list[str]]:
    """Tensors of a ``torch.save`` file in open_clip naming, read without running it, and the globals it named
    that were neutralised (e.g. ``src.modeling.ImageEncoder``). Raises :class:`PeruError` on hostile files."""
    path = Path(path)
    _check_archive(path)
    _found().clear()
    try:
        with warnings.catch_warnings():  # the legacy format warns that placeholders have no source to check
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", pickle_module=RESTRICTED_PICKLE, weights_only=False)
    except PeruError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a foreign file is a user-facing error
        raise PeruError(f"{path} could not be read as a torch.save checkpoint ({type(e).__name__}: {e}).") from None
    finally:
        found = sorted(set(_found()))
        _found().clear()
    raw: StateDict = {}
    _collect(obj, "", raw, set())
    if not raw:
        raise PeruError(f"{path} holds no tensors; it is not a model checkpoint.")
    sd = hf_clip.to_open_clip(raw)
    if hf_clip.detect_layout(sd) != hf_clip.OPEN_CLIP:
        raise PeruError(f"{path} holds {len(raw)} tensors but none named like a CLIP model (e.g. {next(iter(raw))!r}); "
                        "convert only CLIP image encoders or state dicts.")
    return sd, found


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert_checkpoint` did: tensors written, globals neutralised, the risk it avoided."""

    out: Path
    tensors: int
    values: int
    neutralised: tuple[str, ...]
    pickled: bool = True

    def explain(self) -> str:
        lines = [RISK] if self.pickled else []
        lines += [f"Wrote {self.tensors} tensors ({self.values:,} values) to {self.out}."]
        if self.neutralised:
            lines.append("Neutralised (recorded, never run): " + ", ".join(self.neutralised) + ".")
        return "\n".join(lines)


def convert_checkpoint(src: str | Path, dst: str | Path, *, only: Optional[str] = None,
                       on_progress: Progress = None) -> Conversion:
    """Convert a pickled checkpoint ``src`` to safetensors ``dst`` (open_clip names, dtypes kept), safely.

    A safetensors ``src`` in Hugging Face CLIP names is only renamed (no pickle involved).

    ``only`` keeps the keys under one prefix (e.g. ``"visual."`` for an image encoder's fine-tuned part).
    """
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise PeruError(f"The output {dst.name} should end in .safetensors.")
    src = Path(src)
    pickled = not (src.is_file() and not _looks_pickled(src))
    if not pickled:  # safetensors in Hugging Face names: rename only, no risk
        sd, found = hf_clip.to_open_clip(load_state_dict(src)), []
    else:
        report(on_progress, 0.0, f"reading {src.name} with the restricted unpickler")
        sd, found = read_pickled_checkpoint(src)
    if only:
        sd = {k: v for k, v in sd.items() if k.startswith(only)}
        if not sd:
            raise PeruError(f"{src} has no tensors under {only!r}; drop --only or fix the prefix.")
    report(on_progress, 0.6, f"writing {len(sd)} tensors")
    save_state_dict(sd, dst, metadata={"converted_from": src.name, "format": "pt"})
    report(on_progress, 1.0, "done")
    return Conversion(dst, len(sd), sum(t.numel() for t in sd.values()), tuple(found), pickled)
