"""Top-m% selection of a task vector, with one partition + one sort per vector serving a whole sweep of m.

Keeps the m% entries of largest magnitude, either over the whole flattened vector (``global``, the paper's choice)
or within each tensor (``per-tensor``). PERU: https://arxiv.org/abs/2310.01886 (eq. 1).

Conventions (where the paper is silent):

* the kept count is ``k = floor(d * m / 100 + 1/2)`` (per tensor with ``d_i`` for ``per-tensor``); m=0 keeps nothing,
  m=100 keeps everything;
* exactly ``k`` entries are kept: ties at the threshold go to the lower flat index (layout order, then element
  order), so results are deterministic;
* ``count="int+1"`` instead keeps ``int(d * m / 100) + 1`` entries plus every tie at the threshold (every ``|v| >=``
  the (int(d m) + 1)-th largest), the TIES authors' ``topk_values_mask`` (FusionBench's too), so a table computed
  with that code can be matched; m=0 then keeps the largest entry and its ties;
* a :class:`TopM` partitions ``|v|`` once for the largest m it is asked for (``numpy.partition``, linear time), sorts
  only that slice, and then every smaller m is a prefix of the same arrays (no work per m). On a GPU it instead
  sorts ``|v|`` once with a stable descending sort (a radix sort there; the same order, ties to the lower index).
"""
from __future__ import annotations

import bisect
import json
import math
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Optional

import numpy as np
import torch

from peru_core.device import DeviceLike, resolve_device
from peru_core.errors import PeruError
from peru_core.statedict import CHUNK, FUSED_CHUNK, Layout, flatten, unflatten, work_dtype
from peru_core.types import StateDict

SCOPES = ("global", "per-tensor")
COUNTS = ("round", "int+1")  # top-m% conventions: ours (exact count) and the TIES authors' code (int + 1, all ties)
FORMAT = "peru-sparse-v2"  # v2: values + mask or indices (v1: indices)


def check_keep(keep: float) -> float:
    """``keep`` (m, a percent) as a float in [0, 100], or a one-sentence PeruError."""
    try:
        m = float(keep)
    except (TypeError, ValueError):
        raise PeruError(f"keep={keep!r} is not a number; give a percent in [0, 100].") from None
    if not 0.0 <= m <= 100.0:  # also rejects NaN
        raise PeruError(f"keep={keep} is out of range; give a percent in [0, 100].")
    return m


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise PeruError(f"Unknown scope {scope!r}; use one of: {', '.join(SCOPES)}.")
    return scope


def check_count(count: str) -> str:
    if count not in COUNTS:
        raise PeruError(f"Unknown top-m% count convention {count!r}; use one of: {', '.join(COUNTS)}.")
    return count


def keep_count(d: int, keep: float) -> int:
    """Entries kept out of ``d`` at ``keep`` percent: ``floor(d * keep / 100 + 1/2)``, within [0, d]."""
    return min(d, max(0, int(math.floor(d * check_keep(keep) / 100.0 + 0.5))))


def kth_largest_abs(x: np.ndarray, k: int, *, scratch: Optional[np.ndarray] = None) -> float:
    """The k-th largest ``|x|`` (1 <= k <= len(x)) by one in-place ``numpy.partition`` of a scratch copy."""
    buf = np.abs(x, out=scratch[: x.size] if scratch is not None else None)
    buf.partition(x.size - k)
    return float(buf[x.size - k])


def _candidates(x: np.ndarray, thr: float) -> np.ndarray:
    """Ascending flat positions with ``|x| >= thr``, in chunks (no full-size temporaries)."""
    n = min(CHUNK, x.size)
    tmp, hit = np.empty(n, dtype=x.dtype), np.empty(n, dtype=bool)
    parts = []
    for s in range(0, x.size, CHUNK):
        m = min(CHUNK, x.size - s)
        np.greater_equal(np.abs(x[s:s + m], out=tmp[:m]), thr, out=hit[:m])
        found = np.flatnonzero(hit[:m])
        found += s
        parts.append(found)
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _top_keys(x: np.ndarray, thr: float) -> np.ndarray:
    """One uint64 sort key per entry with ``|x| >= thr`` (float32 ``x``, fewer than 2**31 entries), in chunks.

    High word: the inverted bits of ``|x|`` (monotone for non-negative floats, so an ascending integer sort is by
    decreasing magnitude); low word: ``position << 1 | sign bit``, which orders ties by increasing position (positions
    are unique) and carries the sign, so the sorted keys give back the exact values with no gather of ``x``.
    """
    n = min(CHUNK, x.size)
    tmp, hit = np.empty(n, dtype=x.dtype), np.empty(n, dtype=bool)
    bits = x.view(np.uint32)
    parts = []
    for s in range(0, x.size, CHUNK):
        m = min(CHUNK, x.size - s)
        np.greater_equal(np.abs(x[s:s + m], out=tmp[:m]), thr, out=hit[:m])
        found = np.flatnonzero(hit[:m])  # ascending, int64, chunk-relative
        b = bits[s:s + m][found]  # a gather within the chunk (in cache)
        found += s
        found <<= 1
        found |= b >> np.uint32(31)
        np.bitwise_and(b, np.uint32(0x7FFFFFFF), out=b)
        np.subtract(np.uint32(0xFFFFFFFF), b, out=b)
        key = b.astype(np.uint64)
        key <<= np.uint64(32)
        key |= found.view(np.uint64)
        parts.append(key)
    return np.concatenate(parts) if parts else np.empty(0, np.uint64)


def _decode_keys(top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (int64) and exact float32 values of sorted :func:`_top_keys` keys (``top`` is overwritten)."""
    if sys.byteorder == "little":  # the two 32-bit words as strided views: no 64-bit temporaries
        words = top.view(np.uint32).reshape(-1, 2)
        vb = np.subtract(np.uint32(0xFFFFFFFF), words[:, 1])  # |x| bits
        sign = np.bitwise_and(words[:, 0], np.uint32(1))
    else:
        vb = np.subtract(np.uint32(0xFFFFFFFF), (top >> np.uint64(32)).astype(np.uint32))
        sign = (top & np.uint64(1)).astype(np.uint32)
    sign <<= np.uint32(31)
    vb |= sign  # the sign back
    top >>= np.uint64(1)  # the low word's position (the high word is shifted out next)
    top &= np.uint64(0x7FFFFFFF)
    return top.view(np.int64), vb.view(np.float32)


def _sorted_top(x: np.ndarray, k: int, scratch: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions and values of the k largest ``|x|``, by decreasing magnitude, ties to the lower position."""
    if k <= 0:
        return np.empty(0, np.int64), x[:0]
    thr = kth_largest_abs(x, k, scratch=scratch)
    if x.dtype == np.float32 and x.size < 2**31:
        # a single SIMD integer sort of packed keys (numpy's argsort is 10x slower), values decoded from the keys
        key = _top_keys(x, thr)  # all entries >= the k-th largest, ties included
        key.sort()
        return _decode_keys(key[:k])
    cand = _candidates(x, thr)
    order = cand[np.argsort(-np.abs(x[cand]), kind="stable")[:k]]
    return order, x[order]


def sorted_top_torch(x: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and values of the k largest ``|x|``, by decreasing magnitude, ties to the lower position, computed
    where ``x`` lives (the GPU path of :func:`_sorted_top`; on the CPU it gives the same answer, only slower)."""
    if k <= 0:
        return np.empty(0, np.int64), x[:0].cpu().numpy()
    order = torch.sort(x.abs(), descending=True, stable=True).indices[:k]  # stable: equal |x| keep index order
    return order.cpu().numpy(), x[order].cpu().numpy()


def _shift(positions: np.ndarray, offset: int) -> np.ndarray:
    return positions + offset if offset else positions


Segments = list[tuple[int, int]]


def top_segments_numpy(x: np.ndarray, segs: Segments, counts: list[int], scratch: Optional[np.ndarray] = None
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per segment ``[s, e)`` of ``x``, the global positions and values of its ``count`` largest ``|x|`` in
    decreasing order (the CPU path: partition, then sort only the kept slice)."""
    tops = [_sorted_top(x[s:e], k, scratch) for k, (s, e) in zip(counts, segs)]
    return [_shift(o, s) for (o, _), (s, _e) in zip(tops, segs)], [v for _, v in tops]


def top_segments_torch(vector: torch.Tensor, segs: Segments, counts: list[int], device: torch.device
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """:func:`top_segments_numpy` computed on ``device`` (one copy of the vector there, freed on return)."""
    on_device = vector.to(device)
    tops = [sorted_top_torch(on_device[s:e], k) for k, (s, e) in zip(counts, segs)]
    return [_shift(o, s) for (o, _), (s, _e) in zip(tops, segs)], [v for _, v in tops]


_SIGN_ONLY = {torch.float32: (torch.int32, -2**31), torch.float64: (torch.int64, -2**63),
              torch.float16: (torch.int16, -2**15), torch.bfloat16: (torch.int16, -2**15)}


def has_negative_zero(t: torch.Tensor) -> bool:
    """Whether ``t`` holds a -0.0 (the bit pattern with only the sign bit set; one integer compare per value)."""
    kind = _SIGN_ONLY.get(t.dtype)
    if kind is None:
        return bool(((t == 0) & torch.signbit(t)).any())
    return bool(t.reshape(-1).view(kind[0]).eq(kind[1]).any())


def _stream_apply(shared: torch.Tensor, v: torch.Tensor, out: torch.Tensor, cut: Optional[float],
                  select: bool, work: tuple[torch.Tensor, torch.Tensor]) -> None:
    """``out = shared + v`` where ``|v| > cut`` (everywhere for inf), ``shared`` elsewhere (None), chunk by chunk.

    Computed as ``addcmul(shared, v, [|v| > cut])`` with a 0/1 float mask: one fused kernel, 7x faster than
    ``torch.where`` on a bool mask. It is the same value wherever kept (``v * 1`` is exact, then the same single
    add) and ``shared + (+-0) = shared`` elsewhere, except ``-0 + +0 = +0`` (and ``inf * 0 = nan``: ``v`` must be
    finite): callers pass ``select=True`` (``torch.where``) when ``shared`` holds a -0.0.
    """
    if cut is None:
        out.copy_(shared)
        return
    tmp, mask = work
    for s in range(0, v.numel(), FUSED_CHUNK):
        e = min(s + FUSED_CHUNK, v.numel())
        sh, d, o, m = shared[s:e], v[s:e], out[s:e], e - s
        if sh.dtype != out.dtype:
            sh = sh.to(out.dtype)
        if cut == math.inf:
            torch.add(sh, d, out=o)
        elif select:
            hit = torch.abs(d).gt_(cut).bool()
            torch.where(hit, torch.add(sh, d, out=tmp[:m]), sh, out=o)
        else:
            torch.gt(torch.abs(d, out=tmp[:m]), cut, out=mask[:m])  # 1.0 / 0.0
            torch.addcmul(sh, d, mask[:m], out=o)


@dataclass(frozen=True, eq=False)
class SparseDelta:
    """A sparse task part: ``values`` at flat ``indices`` of ``layout`` (indices unique, in no particular order)."""

    layout: Layout
    indices: np.ndarray  # int64 flat positions
    values: np.ndarray  # in the work dtype (float32, or float64 for float64 checkpoints)
    keep: float
    scope: str

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    @property
    def d(self) -> int:
        return self.layout.size

    def to_flat(self, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The dense delta as one flat vector."""
        out = torch.zeros(self.d, dtype=torch.from_numpy(self.values[:0]).dtype) if out is None else out.zero_()
        out[torch.from_numpy(self.indices)] = torch.from_numpy(self.values).to(out.dtype)
        return out

    def to_state_dict(self) -> StateDict:
        """The dense delta per tensor (work dtype)."""
        return unflatten(self.to_flat(), self.layout, cast=False)

    def apply(self, shared: Mapping[str, torch.Tensor], *, out: Optional[torch.Tensor] = None) -> StateDict:
        """``shared + delta`` over the layout's keys, in ``shared``'s dtypes. ``out``: a flat work buffer to reuse
        (the returned tensors are then views of it)."""
        dtype = work_dtype(self.layout.dtypes[0]) if self.layout.dtypes else torch.float32
        flat = flatten(shared, self.layout, out=out if out is not None else torch.empty(self.d, dtype=dtype))
        if self.nnz:
            flat.index_add_(0, torch.from_numpy(self.indices), torch.from_numpy(self.values).to(flat.dtype))
        return unflatten(flat, self.layout)

    def stored_dtype(self) -> torch.dtype:
        """The checkpoint dtype values are stored in (see :func:`part_dtype`)."""
        return part_dtype(self.layout.dtypes)

    def to_tensors(self, dtype: Optional[torch.dtype] = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Tensors and metadata of the task-part file (``docs/task_part_format.md``): ``values`` in ascending flat
        position, in ``dtype`` (default: the stored dtype), and where they go as the cheaper of a packed bitmask
        (``mask``) and ``indices`` (int32 when d < 2**31); no positions when every value is kept."""
        order = np.argsort(self.indices, kind="stable")
        idx = self.indices[order]
        enc = encoding(self.d, self.nnz)
        tensors = {"values": torch.from_numpy(np.ascontiguousarray(self.values[order])).to(
            dtype or self.stored_dtype())}
        if enc == "mask":
            bits = np.zeros(self.d, dtype=bool)
            bits[idx] = True
            tensors["mask"] = torch.from_numpy(np.packbits(bits))  # bit i: byte i // 8, bit 7 - i % 8
        elif enc == "indices":
            tensors["indices"] = torch.from_numpy(idx).to(index_dtype(self.d))
        return tensors, part_metadata(self.layout, self.nnz, self.keep, self.scope)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> "SparseDelta":
        """Inverse of :meth:`to_tensors` (read the file with ``io.load_state_dict`` + ``io.load_metadata``); also
        reads ``peru-sparse-v1`` files (int indices only)."""
        fmt = metadata.get("format")
        if fmt not in (FORMAT, "peru-sparse-v1") or "values" not in tensors or "layout" not in metadata:
            raise PeruError("This file is not a PERU sparse task part; save one with `reuse` or the Merge lab.")
        layout = Layout.from_json(json.loads(metadata["layout"]))
        values = tensors["values"].to(work_dtype(tensors["values"].dtype)).numpy()
        enc = metadata.get("encoding", "indices")
        if enc == "mask":
            idx = np.flatnonzero(np.unpackbits(tensors["mask"].numpy(), count=layout.size)).astype(np.int64)
        elif enc == "dense":
            idx = np.arange(layout.size, dtype=np.int64)
        else:
            idx = tensors["indices"].numpy().astype(np.int64)
        if idx.size != values.size:
            raise PeruError("This sparse task part is corrupt (positions and values differ in number); "
                            "export it again.")
        return cls(layout, idx, values, float(metadata["keep"]), metadata["scope"])


def part_dtype(dtypes: Iterable[torch.dtype]) -> torch.dtype:
    """The dtype a sparse part stores its values in: the checkpoint's when all tensors share one, else float32."""
    ds = set(dtypes)
    return ds.pop() if len(ds) == 1 else torch.float32


def index_dtype(d: int) -> torch.dtype:
    """Flat positions of a d-value vector: int32 when they fit, else int64."""
    return torch.int32 if d < 2**31 else torch.int64


def encoding(d: int, nnz: int) -> str:
    """How a part with ``nnz`` of ``d`` values says where they go: ``dense`` (all kept: no positions), ``mask``
    (ceil(d / 8) bytes) when strictly smaller than the indices, else ``indices``."""
    if nnz == d and d > 0:
        return "dense"
    idx_bytes = torch.empty(0, dtype=index_dtype(d)).element_size()
    return "mask" if math.ceil(d / 8) < idx_bytes * nnz else "indices"


def part_entries(d: int, nnz: int, dtype: torch.dtype) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """The tensors (name, dtype, shape) of a sparse task-part file, as :meth:`SparseDelta.to_tensors` writes them."""
    enc = encoding(d, nnz)
    out = [("values", dtype, (nnz,))]
    if enc == "mask":
        out.append(("mask", torch.uint8, (math.ceil(d / 8),)))
    elif enc == "indices":
        out.append(("indices", index_dtype(d), (nnz,)))
    return out


def part_metadata(layout: Layout, nnz: int, keep: float, scope: str) -> dict[str, str]:
    """The metadata strings of a sparse task-part file (format, encoding, m, scope, layout)."""
    return {"format": FORMAT, "encoding": encoding(layout.size, nnz), "keep": repr(float(keep)), "scope": scope,
            "layout": json.dumps(layout.to_json())}


class TopM:
    """Top-m% selector for one task vector: prepare once (for the largest m), then any m is a prefix.

    ``vector`` is a flat work-dtype tensor laid out by ``layout`` (see :func:`peru_core.statedict.flat_difference`);
    it is kept, not copied, so do not modify it while the selector is in use.
    """

    def __init__(self, vector: torch.Tensor, layout: Layout, scope: str = "global", *,
                 scratch: Optional[np.ndarray] = None, device: DeviceLike = None, count: str = "round"):
        if vector.dim() != 1 or vector.numel() != layout.size:
            raise ValueError("vector must be flat and match the layout")
        self.count = check_count(count)  # "int+1": the TIES authors' convention, selected by threshold (see above)
        # optional work buffer (at least layout.size values of the vector's dtype) reused across selectors, so a
        # sweep over many tasks does not page-fault a fresh |v| copy per task
        self.layout, self.scope = layout, check_scope(scope)
        self.device = resolve_device(device)  # where prepare() sorts; the selected parts always come back to the host
        self.vector = vector.contiguous()
        self._x = self.vector.numpy()
        ok = scratch is not None and scratch.size >= layout.size and scratch.dtype == self._x.dtype
        self._scratch = scratch if ok else None
        self._k: list[int] = []  # prepared count per segment (one segment for global)
        self._order: list[np.ndarray] = []  # global flat positions by decreasing magnitude, per segment
        self._vals: list[np.ndarray] = []
        self._all_finite: Optional[bool] = None  # the fast apply path needs a finite vector and no -0.0 in shared
        self._negzero: Optional[tuple[Mapping[str, torch.Tensor], bool]] = None

    @classmethod
    def of(cls, task_vector: Mapping[str, torch.Tensor], scope: str = "global", *,
           device: DeviceLike = None, count: str = "round") -> "TopM":
        """From a state dict of differences (copied into one flat work-dtype vector)."""
        layout = Layout.of(task_vector)
        return cls(flatten(task_vector, layout), layout, scope, device=device, count=count)

    def _segments(self) -> list[tuple[int, int]]:
        if self.scope == "global":
            return [(0, self.layout.size)]
        return [(s, e) for _, s, e in self.layout.spans()]

    def prepare(self, max_keep: float) -> None:
        """Partition and sort the slice that serves every m <= ``max_keep`` (m = 100 needs no preparation)."""
        segs = self._segments()
        want = [keep_count(e - s, max_keep) for s, e in segs]
        want = [k if k < e - s else 0 for k, (s, e) in zip(want, segs)]  # "keep all" needs no sort
        if self._k and all(w <= k for w, k in zip(want, self._k)):
            return
        self._k = want
        # positions and values gathered once: every m then takes a prefix view
        if self.device.type == "cpu":
            self._order, self._vals = top_segments_numpy(self._x, segs, want, self._scratch)
        else:
            self._order, self._vals = top_segments_torch(self.vector, segs, want, self.device)

    def select(self, keep: float) -> SparseDelta:
        """The top-``keep``% entries (exactly ``keep_count`` per segment; ``count="int+1"``: see the module)."""
        keep = check_keep(keep)
        segs = self._segments()
        if self.count == "int+1":
            return self._select_int_plus_one(keep, segs)
        counts = [keep_count(e - s, keep) for s, e in segs]
        if any(k < e - s and (not self._k or k > self._k[i]) for i, (k, (s, e)) in enumerate(zip(counts, segs))):
            self.prepare(keep)
        idx, val = [], []
        for i, (k, (s, e)) in enumerate(zip(counts, segs)):
            full = k == e - s
            idx.append(np.arange(s, e, dtype=np.int64) if full else self._order[i][:k])
            val.append(self._x[s:e] if full else self._vals[i][:k])
        if len(idx) == 1:
            return SparseDelta(self.layout, idx[0], val[0], keep, self.scope)
        return SparseDelta(self.layout, np.concatenate(idx), np.concatenate(val), keep, self.scope)

    @property
    def nbytes(self) -> int:
        """Host memory held: the flat vector and the sorted top slice (positions + values); before it is prepared,
        0.6x the vector, the slice's size at m = 20%."""
        vec = self.vector.numel() * self.vector.element_size()
        top = sum(o.nbytes + v.nbytes for o, v in zip(self._order, self._vals))
        return int(vec + (top if self._order else 0.6 * vec))

    def apply(self, shared: Mapping[str, torch.Tensor], keep: float, *,
              out: Optional[torch.Tensor] = None) -> StateDict:
        """``shared + top-keep%`` over the layout's keys (views of ``out``, a flat work-dtype buffer, when given).

        Exactly ``self.select(keep).apply(shared, out=out)``, but as one streaming pass instead of a scatter of the
        kept entries: the top-k set is every entry with ``|v| > t`` (t: the k-th largest magnitude) plus the kept
        ties at t (the last entries of the sorted prefix, few), so each output value is ``shared + v`` (the same
        single float add) where kept and ``shared`` elsewhere. ``count="int+1"`` and a vector with a non-finite
        value take the scatter path.
        """
        keep = check_keep(keep)
        if self.count != "round" or not self._finite():  # thresholds need finite magnitudes
            return self.select(keep).apply(shared, out=out)
        segs = self._segments()
        counts = [keep_count(e - s, keep) for s, e in segs]
        if any(k < e - s and (not self._k or k > self._k[i]) for i, (k, (s, e)) in enumerate(zip(counts, segs))):
            self.prepare(keep)
        flat = out if out is not None else torch.empty(self.layout.size, dtype=self.vector.dtype)
        cuts, ties = [], []  # per segment: None (keep nothing), inf (keep all) or the strict threshold t
        for i, (k, (s, e)) in enumerate(zip(counts, segs)):
            if k == 0 or k == e - s:
                cuts.append(None if k == 0 else math.inf)
                continue
            vals = self._vals[i]
            t = abs(float(vals[k - 1]))
            j = bisect.bisect_left(vals, -t, 0, k, key=lambda v: -abs(float(v)))  # first tie at t (descending |v|)
            cuts.append(t)
            ties.append((self._order[i][j:k], vals[j:k]))
        seg_of = (lambda i: 0) if self.scope == "global" else (lambda i: i)
        select = self._negative_zero(shared)
        n = min(FUSED_CHUNK, max(1, self.layout.size))
        work = (torch.empty(n, dtype=flat.dtype), torch.empty(n, dtype=flat.dtype))
        for i, (key, s, e) in enumerate(self.layout.spans()):
            _stream_apply(shared[key].reshape(-1), self.vector[s:e], flat[s:e], cuts[seg_of(i)], select, work)
        for pos, vals in ties:
            flat.index_add_(0, torch.from_numpy(pos), torch.from_numpy(vals).to(flat.dtype))
        return unflatten(flat, self.layout)

    def _finite(self) -> bool:
        """Whether every value of the vector is finite (checked once; the vector is not modified while in use)."""
        if self._all_finite is None:
            self._all_finite = bool(torch.isfinite(self.vector).all())
        return self._all_finite

    def _negative_zero(self, shared: Mapping[str, torch.Tensor]) -> bool:
        """Whether ``shared`` holds a -0.0 on the layout's keys (checked once per shared mapping)."""
        if self._negzero is None or self._negzero[0] is not shared:
            self._negzero = (shared, any(has_negative_zero(shared[k]) for k in self.layout.keys))
        return self._negzero[1]

    def _select_int_plus_one(self, keep: float, segs: Segments) -> SparseDelta:
        """Every ``|v| >=`` the (int(d m / 100) + 1)-th largest, per segment (linear time: one partition, one scan)."""
        idx = []
        for s, e in segs:
            n = min(e - s, int((e - s) * (keep / 100.0)) + 1)
            if n:
                idx.append(_candidates(self._x[s:e], kth_largest_abs(self._x[s:e], n, scratch=self._scratch)) + s)
        pos = np.concatenate(idx) if idx else np.empty(0, np.int64)
        return SparseDelta(self.layout, pos, self._x[pos], keep, self.scope)

    def sweep(self, keeps: Iterable[float]) -> Iterator[tuple[float, SparseDelta]]:
        """``(m, top-m%)`` for every m, after one preparation for the largest."""
        keeps = [check_keep(m) for m in keeps]
        if keeps and self.count == "round":  # "int+1" selects by threshold, with nothing to prepare
            self.prepare(max(m for m in keeps if m < 100) if any(m < 100 for m in keeps) else 0.0)
        for m in keeps:
            yield m, self.select(m)


def top_m(task_vector: Mapping[str, torch.Tensor], keep: float, scope: str = "global", *,
          device: DeviceLike = None, count: str = "round") -> SparseDelta:
    """Keep the top-``keep``% entries of ``task_vector`` by magnitude (``global`` or ``per-tensor``); the selection
    runs on ``device`` (default: the GPU when there is one). ``count``: ``round`` (ours) or ``int+1`` (the TIES
    authors' ``topk_values_mask``)."""
    return TopM.of(task_vector, scope, device=device, count=count).select(keep)
