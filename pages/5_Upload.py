"""Upload: bring your own base model, fine-tunes or LoRA adapters and test data; save them as a zoo on disk.

PERU: https://arxiv.org/abs/2310.01886
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import streamlit as st

from peru_core.errors import PeruError
from peru_core.store import peru_home
from ui import page, sidebar, state
from ui import upload as up

page.setup("Upload", ":material/upload_file:")
sidebar.context(required=False)
page.intro(
    "Upload",
    "A zoo is one pre-trained model $\\theta_0$ (an open_clip CLIP), the fine-tuned image encoders $\\theta_t$ "
    "and/or PEFT LoRA adapters $(A_t, B_t)$ of your tasks, and a test set per task. Each file is checked on "
    "arrival; a valid set is saved as a zoo folder under `$PERU_HOME/zoos/`, so it survives restarts and appears "
    "in the sidebar. Checkpoints larger than an upload can hold: give a folder on disk instead.",
    r"\text{zoo} = \big(\theta_0,\ \{\theta_t \text{ or } \theta_0 + s\,B_t A_t,\ \mathcal{D}_t^{\text{test}},\ "
    r"\text{classes}_t\}_{t=1}^{T}\big)",
    "Section 4.1 (the ViT-B/32, B/16 and L/14 CLIP zoos of Tables 1 to 3)",
)


@st.cache_data(show_spinner="Building the architecture on the meta device…", max_entries=8)
def expected_shapes(arch: str, config_json: str) -> dict[str, tuple[int, ...]]:
    from peru_core.zoo.validate import architecture_shapes

    try:
        return architecture_shapes(arch, json.loads(config_json) if config_json else None)
    except PeruError:
        raise
    except Exception as e:  # noqa: BLE001 - open_clip raises many kinds for an unknown name or a bad config
        raise PeruError(f"Architecture {arch!r} could not be built ({type(e).__name__}); give an open_clip name or "
                        "its model_config.json.") from None


def verdict(label: str, check) -> bool:
    """Run one file check; show its sentence (green when fine, red when not)."""
    try:
        st.markdown(f"✅ **{label}**: {check()}")
        return True
    except PeruError as e:
        st.error(f"**{label}**: {e}")
        return False


def stage(files, kind: str, root: Path) -> dict[str, Path]:
    """Write uploads under ``root/kind`` (zips unpacked); task name = file stem."""
    out = {}
    for f in files or []:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(f.name).stem)
        dest = root / kind / f.name
        if f.name.endswith(".zip"):
            folder = root / kind / f"{stem}.{f.size}"  # a fixed zip uploaded again under its name is unpacked again
            if not folder.exists():
                try:
                    up.extract_zip(f.getvalue(), folder)
                except PeruError as e:
                    st.error(f"**{f.name}**: {e}")
                    continue
            out[stem] = up.content_root(folder)
        else:
            if not dest.is_file() or dest.stat().st_size != f.size:
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(f.getvalue())
            out[stem] = dest
    return out


with page.user_errors():
    c = st.columns([1, 1, 1])
    name = state.kept(c[0].text_input, "Zoo name", key=state.UP_NAME, value="", placeholder="my_vit_b32_zoo",
                      max_chars=60).strip()
    arch = state.kept(c[1].selectbox, "Architecture (open_clip name)", key=state.UP_ARCH,
                      options=[*up.ARCHITECTURES, "other"], index=0)
    if arch == "other":
        arch = state.kept(c[1].text_input, "Other open_clip name", key="up_arch_other", value="").strip()
    mode = state.kept(c[2].radio, "Files", key="up_mode", options=["upload", "folder"], index=0,
                      format_func={"upload": "Upload them", "folder": "A folder on disk (large checkpoints)"}.get,
                      help="A folder is read in place (nothing is copied): base*.safetensors and model_config.json "
                           "(custom architectures) at the top, one sub-folder per task.")
    if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise PeruError("Use letters, digits, '.', '_' or '-' in the zoo name (it becomes a folder name).")
    target = peru_home() / "zoos" / name if name else None
    prefix = "visual."
    model_config = None

    if mode == "upload":
        st.caption("Upload limit: see `server.maxUploadSize` in .streamlit/config.toml (1 GB: a ViT-B/32 fits).")
        staging = peru_home() / "uploads" / (name or "_unnamed")
        u = st.columns(2)
        base_file = u[0].file_uploader("Base model (.safetensors)", type=["safetensors"], key=state.UP_BASE)
        fts = u[0].file_uploader("Fine-tuned image encoders, one per task (.safetensors; task = file name)",
                                 type=["safetensors"], accept_multiple_files=True, key=state.UP_FINETUNED)
        ads = u[1].file_uploader("LoRA adapters, one zip per task (adapter_config.json + adapter_model.safetensors)",
                                 type=["zip"], accept_multiple_files=True, key=state.UP_ADAPTERS)
        data = u[1].file_uploader("Test data per task: a zip of an image folder (one sub-folder per class) or .npz",
                                  type=["zip", "npz"], accept_multiple_files=True, key=state.UP_DATA)
        cfg_file = u[0].file_uploader("Custom architecture only: its open_clip model_config.json", type=["json"],
                                      key="up_config")
        model_config = up.read_config(cfg_file.getvalue()) if cfg_file else None
        base = stage([base_file] if base_file else [], "base", staging)
        base_path = next(iter(base.values()), None)
        ft_paths, ad_paths, data_paths = (stage(fts, "finetuned", staging), stage(ads, "adapters", staging),
                                          stage(data, "data", staging))
        tasks = {n: up.TaskFiles(n) for n in list(ft_paths) + list(ad_paths)}
        for n, t in tasks.items():
            t.finetuned, t.lora = ft_paths.get(n), up.adapter_root(ad_paths[n]) if n in ad_paths else None
            t.test = data_paths.get(n)
            t.classes = up.folder_classes(t.test) if t.test is not None else ()
    else:
        folder = state.kept(st.text_input, "Folder", key=state.UP_FOLDER, value="", placeholder="/data/vit_b32_zoo",
                            help="base*.safetensors at the top; one sub-folder per task with a fine-tune "
                                 "(*.safetensors) and/or an adapter folder, optional test/ (image folder) or "
                                 "test.npz, optional classes.txt.")
        base_path, found = up.scan_folder(Path(folder).expanduser()) if folder.strip() else (None, [])
        tasks = {t.name: t for t in found}
        cfg = Path(folder).expanduser() / "model_config.json"
        model_config = up.read_config(cfg.read_bytes()) if folder.strip() and cfg.is_file() else None
    if not arch:
        st.info("Name the open_clip architecture of the checkpoints.")
        st.stop()
    expected = expected_shapes(arch, json.dumps(model_config, sort_keys=True) if model_config else "")

    names_text = state.kept(st.text_area, "Class names (one line per task: `task: class a, class b, ...`)",
                            key=state.UP_CLASSES, value="", height=90,
                            help="Needed for tasks whose test data does not name the classes (.npz, or none).")
    for n, classes in up.parse_classes(names_text).items():
        if n in tasks and classes:
            tasks[n].classes = classes

    st.subheader("Checks")
    ok = base_path is not None and verdict(f"base · {base_path.name}",
                                           lambda: up.check_base(base_path, expected, arch))
    if base_path is None:
        st.info("Add the base model (the pre-trained CLIP every task was fine-tuned from).")
    if not tasks:
        st.info("Add at least one task: a fine-tuned encoder and/or a LoRA adapter.")
        ok = False
    for n, t in tasks.items():
        if t.finetuned is not None:
            ok &= verdict(f"{n} · fine-tune {t.finetuned.name}", lambda t=t: up.check_finetuned(t.finetuned, expected,
                                                                                                prefix))
        if t.lora is not None:
            ok &= verdict(f"{n} · adapter {t.lora.name}", lambda t=t: up.check_adapter(t.lora, expected))
        if t.test is not None:
            ok &= verdict(f"{n} · test data {t.test.name}", lambda t=t: up.check_data(t.test, t.classes))
        else:
            st.warning(f"**{n}**: no test data, so accuracies cannot be computed for this task.")
        if len(t.classes) < 2:
            st.error(f"**{n}**: give at least two class names (a line `{n}: class a, class b`).")
            ok = False
    if target is not None and (target / "zoo.json").exists():
        st.error(f"A zoo named {name!r} exists already in {target.parent}; pick another name.")
        ok = False
    if not name:
        st.info("Name the zoo to save it.")
    if st.button("Save as a new zoo", key=state.UP_SAVE, type="primary", disabled=not (ok and name)):
        bar = st.progress(0.0, text="Writing the zoo…")
        zoo = up.write(target, arch, base_path, tasks.values(), copy=(mode == "upload"), model_config=model_config,
                       on_progress=lambda f, m: bar.progress(f, text=m),
                       staged=staging if mode == "upload" else None)
        bar.empty()
        st.session_state[state.SHADOW + state.ZOO_KIND] = "uploaded"
        st.session_state[state.SHADOW + state.ZOO_UPLOADED] = name
        st.success(f"Saved zoo {zoo.name!r} with {len(zoo.tasks)} tasks in {target}; it is now selected in the "
                   "sidebar.")
        st.page_link("app.py", label="See its summary on Home", icon=":material/home:")
