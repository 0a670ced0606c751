"""The sidebar on every page: which zoo (demo, a folder on disk, one created by upload), which device, and (with a
GPU or a CPU with native bfloat16) which evaluation precision."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

import torch

from peru_core.device import available_devices, supports_bf16
from peru_core.errors import PeruError
from peru_core.store import peru_home
from peru_core.zoo.manifest import DEMO_ZOO, Zoo
from ui import cache, state

NAV = (("app.py", "Home", ":material/home:"), ("pages/1_Merge_lab.py", "Merge lab", ":material/science:"),
       ("pages/2_Trade-offs.py", "Trade-offs", ":material/show_chart:"),
       ("pages/3_Spectra.py", "Spectra", ":material/equalizer:"),
       ("pages/4_Embeddings.py", "Embeddings", ":material/scatter_plot:"),
       ("pages/5_Upload.py", "Upload", ":material/upload_file:"))
KINDS = {"demo": "Demo zoo", "folder": "A zoo folder on disk", "uploaded": "A zoo created by upload"}
PRECISION = "precision"  # widget key (kept across pages)
PRECISIONS = {"float32": "float32 (exact)", "bf16": "bfloat16 (faster, approximate)"}


def demo_root() -> Path:
    """The demo zoo (``$PERU_DEMO_ZOO`` overrides ``assets/zoo``: tests and fresh builds)."""
    return Path(os.environ.get("PERU_DEMO_ZOO") or DEMO_ZOO)


def uploaded_zoos() -> dict[str, Path]:
    """Zoos saved by the Upload page: ``$PERU_HOME/zoos/<name>/zoo.json``."""
    root = peru_home() / "zoos"
    return {p.parent.name: p.parent for p in sorted(root.glob("*/zoo.json"))} if root.is_dir() else {}


@dataclass(frozen=True)
class Context:
    """What a page works on: the zoo, its content hash and the device."""

    zoo: Zoo
    zoo_hash: str
    device: str
    precision: str = "float32"

    @property
    def runtime(self):
        """The cached :class:`ZooRuntime` (loads the model on first use)."""
        return cache.runtime(str(self.zoo.root), self.zoo_hash, self.device, self.precision)


def folder_root(text: str) -> Path | str:
    """The zoo a typed folder names: a path on this server (``~`` expanded; a typed ``.../zoo.json`` means its
    folder), or the string itself when it is a URL-like reference (``hf://...``) for the core loader to resolve.
    Raises a one-sentence PeruError when the folder does not exist."""
    text = text.strip()
    if "://" in text:
        return text
    p = Path(text).expanduser()
    if p.is_file() and p.name == "zoo.json":
        return p.parent
    if not p.exists():
        raise PeruError(f"Folder {text} does not exist; type the path of a zoo folder on this server (one that "
                        "holds zoo.json).")
    if not p.is_dir():
        raise PeruError(f"{text} is a file, not a folder; type the folder that holds zoo.json.")
    return p


def _pick_root() -> Path | str | None:
    sb = st.sidebar
    kind = state.kept(sb.radio, "Zoo", key=state.ZOO_KIND, options=list(KINDS), format_func=KINDS.get, index=0)
    if kind == "folder":
        folder = state.kept(sb.text_input, "Zoo folder (holding zoo.json)", key=state.ZOO_FOLDER, value="",
                            placeholder="/data/my_zoo")
        if not folder.strip():
            sb.info("Type the path of a folder that holds a zoo.json.")
            return None
        return folder_root(folder)
    if kind == "uploaded":
        zoos = uploaded_zoos()
        if not zoos:
            sb.info("No uploaded zoo yet: create one on the Upload page.")
            return None
        name = state.kept(sb.selectbox, "Uploaded zoo", key=state.ZOO_UPLOADED, options=list(zoos))
        return zoos[name]
    return demo_root()


def _pick_precision(device: str) -> str:
    """The evaluation precision: a choice where the device computes bfloat16 natively (a GPU, or a CPU with
    AVX512-BF16 or AMX); float32 elsewhere: where the GPU could but the CPU is picked the choice is shown disabled
    with the reason, and where nothing could, not at all."""
    if supports_bf16(torch.device(device)):
        return state.kept(st.sidebar.selectbox, "Precision", key=PRECISION, options=list(PRECISIONS),
                          format_func=PRECISIONS.get, index=0,
                          help="float32 gives the exact numbers; bfloat16 evaluates faster (about 2x on the demo "
                          "zoo), its accuracies may differ slightly and are stored apart from float32 ones (never "
                          "shown as them).")
    if "cuda" in available_devices():
        st.sidebar.selectbox("Precision", options=list(PRECISIONS), format_func=PRECISIONS.get, index=0,
                             disabled=True, key=PRECISION + "_cpu",
                             help="This CPU has no native bfloat16; pick cuda as the device to choose it.")
    return "float32"


def context(required: bool = True) -> Context | None:
    """Draw the sidebar and return the chosen zoo and device; with ``required`` stop the page (one sentence)
    when no zoo can be loaded."""
    for path, label, icon in NAV:  # our own links: the built-in list would call Home "app"
        st.sidebar.page_link(path, label=label, icon=icon)
    st.sidebar.divider()
    try:
        root = _pick_root()
    except PeruError as e:
        root = e
    devices = available_devices()
    device = state.kept(st.sidebar.selectbox, "Device", key=state.DEVICE, options=devices, index=0,
                        help="Where merges and evaluations run: the GPU when there is one, else the CPU.")
    precision = _pick_precision(device)
    if root is None:
        if required:
            st.info("Pick a zoo in the sidebar to start.")
            st.stop()
        return None
    try:
        if isinstance(root, PeruError):
            raise root
        zoo = cache.zoo_at(root)
        ctx = Context(zoo, cache.zoo_hash(zoo), device, precision)
    except PeruError as e:
        if not required:
            st.sidebar.warning(str(e))
            return None
        st.error(str(e))
        st.stop()
    except OSError as e:  # a file vanished between listing and hashing
        st.error(f"Could not read the zoo at {root} ({e.strerror}); check the folder and try again.")
        st.stop()
    st.sidebar.caption(f"{ctx.zoo.name}: {len(ctx.zoo.tasks)} tasks · {ctx.zoo.architecture} · "
                       f"hash {ctx.zoo_hash[:8]}")
    if precision != "float32":  # every number on the page is of this precision: say so where the page is read
        st.info(f"Accuracies on this page are evaluated in {PRECISIONS[precision].split(' (')[0]}, stored apart from "
                "float32 ones; pick float32 in the sidebar for the exact numbers.", icon=":material/speed:")
    return ctx
