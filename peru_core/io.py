"""Checkpoint I/O: safetensors state dicts (read, atomic write), PEFT LoRA adapters, and validation.

Every problem with user input raises :class:`PeruError` with one sentence (what is wrong, how to fix it).
Pickled checkpoints (.pt/.bin/.pth) are refused: unpickling can run code. Convert them once with
``python -m peru_core convert``. PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Optional, Sequence, Union

import safetensors.torch
import torch

from peru_core.errors import PeruError
from peru_core.types import StateDict

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]
MAX_HEADER = 100_000_000  # bytes of JSON header read at most; safetensors itself refuses larger ones
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}
CONVERT_HINT = "convert it once to safetensors with `python -m peru_core convert` (see its --help) and use that file"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LINEARIZED_WEIGHTS = "linearized_adapter_model.safetensors"  # FusionBench's L-LoRA export, see peru_core.llora


# ----------------------------------------------------------------------------------------------- safetensors files
def is_pickle(head: bytes) -> bool:
    """True when a file's first bytes (9 or more) are a torch.save zip archive or a raw pickle.

    torch.save writes a zip (``PK\\x03\\x04``); older files and raw pickles start with the PROTO opcode 0x80 and a
    protocol of 2-5. A safetensors file starts with its header length, whose first bytes can look like PROTO
    (a header of 640 bytes starts 0x80 0x02), and then the JSON header's ``{``: that byte decides.
    """
    head = bytes(head[:9])
    if head[:4] == b"PK\x03\x04":
        return True
    if head[8:9] == b"{":
        return False
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _available_memory() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def read_header(head: bytes, total_size: int, name: str) -> dict:
    """Parse and check a safetensors header (``head`` holds at least its first 8 + header-length bytes).

    Raises a one-sentence PeruError for pickles, corrupt headers and truncated files, before any tensor is read.
    """
    if is_pickle(head):
        raise PeruError(f"{name} is a pickle (PyTorch .pt/.bin) checkpoint, which can run code when loaded; "
                        f"{CONVERT_HINT}.")
    if len(head) < 8:
        raise PeruError(f"{name} is too short to be a safetensors file ({total_size} bytes); the file is truncated "
                        "or empty, so copy or export it again.")
    (n,) = struct.unpack("<Q", bytes(head[:8]))
    if n > total_size - 8 or n > MAX_HEADER:
        raise PeruError(f"{name} is not a valid safetensors file (bad header length); the file is corrupt or "
                        "truncated, so copy or export it again.")
    if len(head) < 8 + n:
        raise PeruError(f"{name} is truncated inside its header; copy or export it again.")
    try:
        header = json.loads(bytes(head[8:8 + n]).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError
        end = 0
        for key, info in header.items():
            if key == "__metadata__":
                continue
            begin, stop = (int(x) for x in info["data_offsets"])
            if begin > stop or not isinstance(info["shape"], list):
                raise ValueError
            end = max(end, stop)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise PeruError(f"{name} is not a valid safetensors file (unreadable header); the file is corrupt, so copy "
                        "or export it again.") from None
    if 8 + n + end > total_size:
        raise PeruError(f"{name} is truncated: its header promises {8 + n + end} bytes but the file has "
                        f"{total_size}; copy or export it again.")
    header["__data_bytes__"] = end  # tensor bytes, starting at file offset __data_start__
    header["__data_start__"] = 8 + n
    return header


def read_file_header(path: Union[str, os.PathLike], name: Optional[str] = None) -> dict:
    """The checked header of the safetensors file at ``path`` (see :func:`read_header`), reading only its first
    8 + header-length bytes. A file named like a pickle (.pt, .bin, ...) that is not valid safetensors is called a
    pickle checkpoint, with the conversion hint."""
    path = Path(path)
    name = name or str(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        if len(head) >= 8 and not is_pickle(head):
            head += f.read(max(0, min(int.from_bytes(head[:8], "little"), MAX_HEADER) - 1))
    try:
        return read_header(head, size, name)
    except PeruError:
        if path.suffix.lower() in PICKLE_SUFFIXES and len(head) >= 8 and not is_pickle(head):
            raise PeruError(f"{name} looks like a PyTorch pickle checkpoint, not safetensors; {CONVERT_HINT}.") \
                from None
        raise


def _check_size(data_bytes: int, name: str, max_bytes: Optional[int]) -> None:
    limit = max_bytes if max_bytes is not None else _available_memory()
    if limit is not None and data_bytes > limit:
        raise PeruError(f"{name} holds {data_bytes / 2**30:.1f} GiB of tensors but only {limit / 2**30:.1f} GiB "
                        "of memory is available; free memory or use a machine with more RAM.")


def load_state_dict(src: Source, *, name: Optional[str] = None, max_bytes: Optional[int] = None,
                    keys: Optional[Callable[[str], bool]] = None) -> StateDict:
    """Read a safetensors state dict from a path or from bytes (e.g. an upload).

    The header is checked first (pickle, corrupt, truncated, larger than available memory) so nothing big is
    read from a bad file. Pickles are refused with a hint to ``python -m peru_core convert``. ``keys`` (paths only):
    read just the tensors whose name it accepts, in file order.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = src if isinstance(src, bytes) else bytes(src)
        name = name or "the uploaded file"
        header = read_header(memoryview(data)[:8 + MAX_HEADER], len(data), name)  # a view: no copy
        _check_size(header["__data_bytes__"], name, max_bytes)
        try:
            return safetensors.torch.load(data)
        except Exception as e:  # safetensors raises its own error types
            raise PeruError(f"{name} could not be read as safetensors ({str(e).splitlines()[0]}); the file is "
                            "corrupt, so copy or export it again.") from None
    if isinstance(src, str) and src.startswith("hf://"):  # resolved through the hub cache (peru_core.hub)
        from peru_core.hub import resolve_file

        name = name or src
        src = resolve_file(src)
    path = Path(src)
    name = name or str(path)
    if path.is_dir():
        raise PeruError(f"{name} is a folder, not a .safetensors file; pass the checkpoint file itself.")
    if not path.is_file():
        raise PeruError(f"{name} does not exist; check the path.")
    header = read_file_header(path, name)
    _check_size(header["__data_bytes__"], name, max_bytes)
    try:
        if keys is not None:
            with safetensors.safe_open(str(path), "pt") as f:
                return {k: f.get_tensor(k) for k in f.offset_keys() if keys(k)}
        return safetensors.torch.load_file(str(path))
    except Exception as e:
        raise PeruError(f"{name} could not be read as safetensors ({str(e).splitlines()[0]}); the file is "
                        "corrupt, so copy or export it again.") from None


def load_metadata(path: Union[str, os.PathLike]) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file (empty dict when none)."""
    with safetensors.safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def _umask() -> int:
    # read it from /proc: os.umask(0) + restore would race with other threads (the dashboard is threaded)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def save_state_dict(sd: Mapping[str, torch.Tensor], path: Union[str, os.PathLike],
                    metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``sd`` as safetensors atomically: a temp file in the same folder, then ``os.replace``.

    Shared or non-contiguous tensors are copied to contiguous storage first (safetensors refuses aliasing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in sd.items()}
    seen: set[int] = set()
    for k, v in tensors.items():  # views of one flat buffer share storage: give each its own
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        if ptr in seen or v.untyped_storage().nbytes() != v.numel() * v.element_size():
            tensors[k] = v.clone()
        seen.add(ptr)
    with atomic_file(path) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    return path


@contextmanager
def atomic_file(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """``with atomic_file(path) as tmp:`` write ``tmp`` (beside ``path``); on success it replaces ``path`` at once
    with the usual permissions, on any error it is removed and ``path`` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------------- validation
def _names(keys: Iterable[str], n: int = 3) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(repr(k) for k in keys[:n]) + more


def check_finite(sd: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse NaN or Inf values (one pass over the floats)."""
    for k, t in sd.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PeruError(f"{name} has NaN or Inf values in {k!r}; the fine-tune diverged or the file is damaged, "
                            "so use another checkpoint.")


def check_float(sd: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse integer / bool tensors (quantized or index tensors cannot be merged)."""
    for k, t in sd.items():
        if not t.is_floating_point():
            raise PeruError(f"{name} holds a {str(t.dtype).removeprefix('torch.')} tensor {k!r}; merging needs "
                            "floating-point weights, so pass an unquantized checkpoint.")


def validate_base(base: Mapping[str, torch.Tensor], *, prefix: str = "", name: str = "the base model") -> None:
    """The base must hold floating-point, finite tensors under ``prefix``."""
    part = {k: v for k, v in base.items() if k.startswith(prefix)}
    if not part:
        raise PeruError(f"{name} holds no tensors under the prefix {prefix!r}; check the prefix or the file."
                        if prefix else f"{name} holds no tensors; pass a real checkpoint.")
    check_float(part, name)
    check_finite(part, name)


def validate_finetuned(base: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], *, prefix: str = "",
                       name: str = "the fine-tuned checkpoint") -> None:
    """A fine-tuned checkpoint must hold exactly the base's keys under ``prefix`` ("" = whole model), with the
    same shapes and dtypes, floating-point and finite."""
    expected = {k for k in base if k.startswith(prefix)}
    got = set(sd)
    missing, extra = expected - got, got - expected
    where = f" under {prefix!r}" if prefix else ""
    if extra:
        raise PeruError(f"{name} has keys that the base model{where} lacks ({_names(extra)}); it belongs to another "
                        "architecture, or pass --prefix for a partial checkpoint.")
    if missing:
        raise PeruError(f"{name} is missing keys of the base model{where} ({_names(missing)}); pass the complete "
                        "checkpoint, or the --prefix of the part it holds.")
    for k in sd:
        if sd[k].shape != base[k].shape:
            raise PeruError(f"{name} has {k!r} of shape {tuple(sd[k].shape)} but the base has "
                            f"{tuple(base[k].shape)}; use checkpoints of the same architecture.")
    check_float(sd, name)
    for k in sd:
        if sd[k].dtype != base[k].dtype:
            raise PeruError(f"{name} stores {k!r} as {str(sd[k].dtype).removeprefix('torch.')} but the base as "
                            f"{str(base[k].dtype).removeprefix('torch.')}; save both in the same dtype.")
    check_finite(sd, name)


def validate_task_names(names: Sequence[str]) -> None:
    """At least one task, and no name twice (names become output file stems)."""
    if len(names) == 0:
        raise PeruError("The task list is empty; pass at least one fine-tuned checkpoint or adapter.")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise PeruError(f"Two tasks are named {n!r}; give every task (file or folder) a distinct name.")
        seen.add(n)


def validate_upload(data: bytes, filename: str, *, base: Optional[Mapping[str, torch.Tensor]] = None,
                    prefix: str = "", max_bytes: Optional[int] = None) -> StateDict:
    """Read and check the bytes of an uploaded checkpoint; against ``base`` (under ``prefix``) when given."""
    sd = load_state_dict(data, name=filename, max_bytes=max_bytes)
    if base is None:
        validate_base(sd, prefix=prefix, name=filename)
    else:
        validate_finetuned(base, sd, prefix=prefix, name=filename)
    return sd


# ----------------------------------------------------------------------------------------------- LoRA adapters
class LoraFactors(tuple):
    """``(A, B, scale)`` in the BASE weight's layout: ``delta = scale * B @ A`` has the base weight's shape.

    For ``fan_in_fan_out`` adapters (weights stored transposed) the loader swaps and transposes the factors, so
    callers never need to know.
    """

    __slots__ = ()

    def __new__(cls, A: torch.Tensor, B: torch.Tensor, scale: float):
        return super().__new__(cls, (A, B, float(scale)))

    A = property(lambda self: self[0])
    B = property(lambda self: self[1])
    scale = property(lambda self: self[2])

    @property
    def rank(self) -> int:
        return int(self[0].shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self[1].shape[0]), int(self[0].shape[1])

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense update ``scale * B @ A`` (out x in)."""
        return (self.B.to(dtype) @ self.A.to(dtype)) * self.scale


@dataclass
class LoraAdapter(Mapping):
    """A PEFT LoRA adapter as a mapping ``base weight key -> LoraFactors(A, B, scale)``."""

    name: str
    factors: dict[str, LoraFactors]
    config: dict = field(default_factory=dict)

    def __getitem__(self, key: str) -> LoraFactors:
        return self.factors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.factors)

    def __len__(self) -> int:
        return len(self.factors)


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
# PEFT's nn.MultiheadAttention wrapper also saves base weights (``...base_layer.weight``): the base checkpoint is
# the source of truth for those, so they are skipped. Note: PEFT 0.21's MultiheadAttention forward (and its
# merge_and_unload) applies the out_proj update twice; this loader follows the file format (once).
_BASE_LAYER_KEY = re.compile(r"^(?:base_model\.model\.)?.+\.base_layer\.(?:weight|bias|in_proj_weight|in_proj_bias)$")


def _pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    if not patterns:
        return default
    # PEFT's own matching (a pattern matches a key suffix at a module boundary, first match wins); imported only
    # here because importing peft costs seconds (it pulls in transformers)
    from peft.utils.other import get_pattern_key
    return patterns.get(get_pattern_key(list(patterns.keys()), module), default)


def _target_key(prefix: str, module: str, base_keys: Optional[Collection[str]]) -> str:
    key = f"{prefix}{module}.weight"
    # LoRA on an nn.MultiheadAttention module (PEFT targets "attn") updates its packed in_proj_weight
    if base_keys is not None and key not in base_keys and f"{prefix}{module}.in_proj_weight" in base_keys:
        return f"{prefix}{module}.in_proj_weight"
    return key


def parse_adapter(config: Mapping, tensors: Mapping[str, torch.Tensor], *, name: str, prefix: str = "",
                  base_keys: Optional[Collection[str]] = None) -> LoraAdapter:
    """Build a :class:`LoraAdapter` from a decoded ``adapter_config.json`` and its tensors.

    A module ``m`` maps to the base key ``<prefix>m.weight`` (``<prefix>m.in_proj_weight`` for a multi-head
    attention module when ``base_keys`` says so); ``prefix`` serves adapters trained on a sub-model.
    """
    from peru_core import llora  # FusionBench L-LoRA exports: folded into plain LoRA factors first

    if llora.is_linearized(tensors):
        config, tensors = llora.fold_linearized(config, tensors, name=name)
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise PeruError(f"Adapter {name} is a {config.get('peft_type')} adapter; only LoRA adapters are supported.")
    if config.get("use_dora"):
        raise PeruError(f"Adapter {name} is a DoRA adapter (use_dora); only plain LoRA adapters are supported.")
    try:
        r_default = int(config["r"])
        alpha_default = float(config.get("lora_alpha", r_default))
    except (KeyError, TypeError, ValueError):
        raise PeruError(f"Adapter {name} has no valid 'r' in {ADAPTER_CONFIG}; export it again with PEFT.") from None
    rank_pattern = dict(config.get("rank_pattern") or {})
    alpha_pattern = dict(config.get("alpha_pattern") or {})
    rslora, fifo = bool(config.get("use_rslora")), bool(config.get("fan_in_fan_out"))
    parts: dict[str, dict[str, torch.Tensor]] = {}  # PEFT module path -> {"A": ..., "B": ...}
    for key, t in tensors.items():
        m = _LORA_KEY.match(key)
        if m is None:
            if _BASE_LAYER_KEY.match(key):
                continue
            raise PeruError(f"Adapter {name} holds {key!r}, which is not a LoRA A/B matrix (embeddings, DoRA and "
                            "modules_to_save are not supported); export a plain LoRA adapter.")
        parts.setdefault(m["module"], {})[m["ab"]] = t
    if not parts:
        raise PeruError(f"Adapter {name} holds no LoRA matrices; export it again with PEFT.")
    grouped: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for path, ab in parts.items():
        if set(ab) != {"A", "B"}:
            have, lack = ("A", "B") if "A" in ab else ("B", "A")
            raise PeruError(f"Adapter {name} has lora_{have} but not lora_{lack} for {path!r}; the file is "
                            "incomplete, so export it again.")
        A, B = ab["A"], ab["B"]
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
            raise PeruError(f"Adapter {name} has LoRA matrices of shapes {tuple(A.shape)} and {tuple(B.shape)} for "
                            f"{path!r}; expected A (r x in) and B (out x r).")
        if not (A.is_floating_point() and B.is_floating_point()):
            raise PeruError(f"Adapter {name} stores {path!r} as integers; pass an unquantized adapter.")
        module = path.replace(".base_layer.", ".")  # PEFT's MHA wrapper: attn.base_layer.out_proj is out_proj
        r = int(A.shape[0])
        r_cfg = int(_pattern_value(rank_pattern, module, r_default))
        if r_cfg != r:
            raise PeruError(f"Adapter {name} has rank {r} for {path!r} but its config says {r_cfg}; the config "
                            "and weights do not belong together.")
        alpha = float(_pattern_value(alpha_pattern, module, alpha_default))
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        if fifo:  # base weight stored (in x out): delta^T = A^T B^T
            A, B = B.t(), A.t()
        grouped.setdefault(module, []).append((A, B, scale))
    factors: dict[str, LoraFactors] = {}
    for module, items in grouped.items():
        A, B, scale = items[0]
        if any(not (torch.equal(a, A) and torch.equal(b, B) and sc == scale) for a, b, sc in items[1:]):
            raise PeruError(f"Adapter {name} holds two different LoRA updates for {module!r} (e.g. both 'attn' and "
                            "its 'out_proj' were targeted); train with one of them.")
        # one update per module, as the file format says (aliases of the same module are the same update)
        factors[_target_key(prefix, module, base_keys)] = LoraFactors(A, B, scale)
    from peru_core import hf_clip  # adapters trained on HF CLIP (q_proj/v_proj/fc1...): onto open_clip weights
    if any(hf_clip.is_hf_module(k) for k in factors):
        factors = {k: LoraFactors(*f) for k, f in hf_clip.map_lora_factors(factors).items()}
    return LoraAdapter(name, factors, dict(config))


def load_lora_adapter(src: Union[str, os.PathLike, tuple[bytes, bytes]], *, name: Optional[str] = None,
                      prefix: str = "", base_keys: Optional[Collection[str]] = None) -> LoraAdapter:
    """Read a PEFT adapter: a folder with ``adapter_config.json`` + ``adapter_model.safetensors``, or the bytes
    of those two files as ``(config_json, safetensors)``.

    Honours ``rank_pattern``/``alpha_pattern`` (PEFT's matching), ``use_rslora`` and ``fan_in_fan_out``.
    """
    if isinstance(src, tuple):
        cfg_bytes, weights = src
        name = name or "the uploaded adapter"
    else:
        if isinstance(src, str) and src.startswith("hf://"):  # resolved through the hub cache (peru_core.hub)
            from peru_core.hub import resolve_adapter

            name = name or src
            src = resolve_adapter(src)
        folder = Path(src)
        name = name or folder.name
        if not folder.is_dir():
            raise PeruError(f"Adapter {folder} is not a folder; pass the folder holding {ADAPTER_CONFIG} and "
                            f"{ADAPTER_WEIGHTS}.")
        if not (folder / ADAPTER_CONFIG).is_file():
            raise PeruError(f"Adapter folder {folder} has no {ADAPTER_CONFIG}; save the adapter with PEFT's "
                            "save_pretrained.")
        weights_path = folder / ADAPTER_WEIGHTS
        if not weights_path.is_file() and (folder / LINEARIZED_WEIGHTS).is_file():
            weights_path = folder / LINEARIZED_WEIGHTS  # a FusionBench L-LoRA export (peru_core.llora)
        if not weights_path.is_file():
            if (folder / "adapter_model.bin").is_file():
                raise PeruError(f"Adapter folder {folder} holds adapter_model.bin, a pickle; save it with "
                                "safe_serialization=True or " + CONVERT_HINT + ".")
            raise PeruError(f"Adapter folder {folder} has no {ADAPTER_WEIGHTS}; save the adapter with PEFT's "
                            "save_pretrained.")
        cfg_bytes, weights = (folder / ADAPTER_CONFIG).read_bytes(), weights_path
    try:
        config = json.loads(cfg_bytes)
        if not isinstance(config, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise PeruError(f"Adapter {name}: {ADAPTER_CONFIG} is not a JSON object; save the adapter again.") from None
    file_name = ADAPTER_WEIGHTS if isinstance(src, tuple) else Path(weights).name
    tensors = load_state_dict(weights, name=f"{name}/{file_name}")
    return parse_adapter(config, tensors, name=name, prefix=prefix, base_keys=base_keys)


def validate_adapter(base: Mapping[str, torch.Tensor], adapter: LoraAdapter) -> None:
    """Every adapter target must be a base weight of the product's shape, and the factors must be finite."""
    for key, f in adapter.items():
        if key not in base:
            raise PeruError(f"Adapter {adapter.name} targets {key!r}, which is not in the base model; use the "
                            "adapter's own base model (or the right prefix).")
        if tuple(base[key].shape) != f.shape:
            raise PeruError(f"Adapter {adapter.name} makes {key!r} of shape {f.shape} but the base has "
                            f"{tuple(base[key].shape)}; the adapter belongs to another architecture.")
        if not (bool(torch.isfinite(f.A).all()) and bool(torch.isfinite(f.B).all())):
            raise PeruError(f"Adapter {adapter.name} has NaN or Inf values for {key!r}; use another adapter.")


# ----------------------------------------------------------------------------------------------- atomic output folders
class atomic_dir:
    """``with atomic_dir(out) as tmp:`` write files into ``tmp``; on success they appear in ``out`` at once
    (a rename of the whole folder when ``out`` is new, one ``os.replace`` per file otherwise); on any error the
    temp folder is removed and ``out`` is untouched."""

    def __init__(self, out: Union[str, os.PathLike]):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise PeruError(f"{self.out} exists and is not a folder; pass a folder path for --out.")
        self.tmp: Optional[Path] = None

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=self.out.parent))
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        import shutil
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if not self.out.exists():
            os.replace(self.tmp, self.out)
            return
        for p in sorted(self.tmp.iterdir()):
            os.replace(p, self.out / p.name)
        self.tmp.rmdir()
