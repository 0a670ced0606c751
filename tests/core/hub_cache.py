"""A Hugging Face hub cache built from files made in the test, in the library's real layout, so hf:// references
resolve offline exactly as after a download: ``<cache>/models--owner--repo/{blobs/<sha256>, refs/<rev>,
snapshots/<commit>/<path> -> ../../blobs/<sha256>}`` (``datasets--...`` for datasets)."""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np


def add_repo(cache: Path, repo_id: str, files: Mapping[str, bytes | Path], *, repo_type: str = "model",
             revision: str = "main") -> tuple[Path, str]:
    """Put ``files`` (path in repo -> bytes, or a local file or folder to copy; "" is the root) into ``cache`` as
    one commit of ``repo_id`` that ``revision`` points at; returns the snapshot folder and the commit hash."""
    blobs: dict[str, bytes] = {}
    for rel, src in files.items():
        if isinstance(src, Path) and src.is_dir():
            for p in sorted(src.rglob("*")):
                if p.is_file():
                    blobs[f"{rel}/{p.relative_to(src)}" if rel else str(p.relative_to(src))] = p.read_bytes()
        else:
            blobs[rel] = src.read_bytes() if isinstance(src, Path) else bytes(src)
    commit = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in blobs.items()))
                          .encode()).hexdigest()
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    for rel, data in blobs.items():
        sha = hashlib.sha256(data).hexdigest()
        blob = repo / "blobs" / sha
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)  # the library writes the hash without a newline
    return snap, commit


def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def parquet_bytes(images: list[bytes], labels: list[int], class_names: list[str] | None = None, *,
                  label_column: str = "label", image_as_struct: bool = True) -> bytes:
    """A parquet file as ``datasets`` writes it: ``image`` struct{bytes, path}, int64 labels and, with
    ``class_names``, the ``huggingface`` schema metadata holding a ClassLabel feature."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if image_as_struct:
        col = pa.array([{"bytes": b, "path": None} for b in images],
                       type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        col = pa.array(images, type=pa.binary())
    table = pa.table({"image": col, label_column: pa.array(labels, type=pa.int64())})
    if class_names is not None:
        feats = {"image": {"_type": "Image"}, label_column: {"names": class_names, "_type": "ClassLabel"}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": feats}})})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=max(1, len(labels) // 3))  # several row groups: batched reads
    return buf.getvalue()
