"""Upload: bring your own base model, fine-tunes, LoRA or L-LoRA adapters and data; save them as a zoo on disk.

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
from ui import upload_form as form

page.setup("Upload", ":material/upload_file:")
form.apply_selection()  # a zoo saved by the last run: selected before the sidebar is drawn
sidebar.context(required=False)
page.intro(
    "Upload",
    "A zoo is one pre-trained model $\\theta_0$ (an open_clip CLIP), the fine-tuned image encoders $\\theta_t$, "
    "PEFT LoRA adapters $(A_t, B_t)$ and/or L-LoRA adapters (LoRA trained in its linearised form) of your tasks, "
    "and a test set per task. Each file is checked on arrival; a valid set is saved as a self-contained zoo folder "
    "under `$PERU_HOME/zoos/`, so it survives restarts and appears in the sidebar. Checkpoints larger than an "
    "upload can hold: give a folder on disk instead.",
    r"\text{zoo} = \big(\theta_0,\ \{\theta_t \text{ or } \theta_0 + s\,B_t A_t,\ \mathcal{D}_t^{\text{test}},\ "
    r"\text{classes}_t,\ \text{prompts}_t\}_{t=1}^{T}\big)",
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
    """Run one file check; show its sentence (a green tick when fine, red when not)."""
    try:
        st.markdown(f":green[:material/check_circle:] **{label}**: {check()}")
        return True
    except PeruError as e:
        st.error(f"**{label}**: {staging.clean(str(e))}")
        return False


def session_id() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return re.sub(r"[^A-Za-z0-9_-]+", "_", ctx.session_id) if ctx else "local"


saved = st.session_state.pop(form.SAVED, None)
if saved:  # the zoo saved by the last run: the sidebar above already shows it selected
    st.success(f"Saved zoo {saved['name']!r} with {saved['tasks']} task(s); it is now selected in the sidebar.",
               icon=":material/check_circle:")
    for note in saved["notes"]:
        st.caption(note)
    st.page_link("app.py", label="See its summary on Home", icon=":material/home:")

staging = up.Staging(peru_home() / "uploads" / session_id())
with page.user_errors():
    up.prune_stale(staging.root.parent, staging.root)
    c = st.columns([1, 2])
    name = state.kept(c[0].text_input, "Zoo name", key=form.key(state.UP_NAME), value="",
                      placeholder="my_vit_b32_zoo", max_chars=60).strip()
    mode = state.kept(c[1].radio, "Files", key="up_mode", options=["upload", "folder"], index=0, horizontal=True,
                      format_func={"upload": "Upload them", "folder": "A folder on disk (large checkpoints)"}.get,
                      help="A folder is read in place: base*.safetensors and model_config.json (custom "
                           "architectures) at the top, one sub-folder per task; or a zoo folder with its zoo.json.")
    if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise PeruError("Use letters, digits, '.', '_' or '-' in the zoo name (it becomes a folder name).")
    target = peru_home() / "zoos" / name if name else None
    start, model_config, copy = None, None, True
    base_path, base_shown = None, ""
    tasks: dict[str, up.TaskFiles] = {}

    if mode == "upload":
        st.caption("Upload limit: see `server.maxUploadSize` in .streamlit/config.toml (1 GB: a ViT-B/32 fits). "
                   "A task is named by its files: `mnist.safetensors`, `mnist_lora.zip`, `mnist_test.npz`, ...")
        u = st.columns(2)
        start_file = u[0].file_uploader(
            "Start from a zoo.json (optional)", type=["json"], key=form.key(form.UP_START),
            help="Its architecture, prompts, image statistics, labels, classes, sources and licences fill the form "
                 "(its files are not needed; upload them below).")
        cfg_file = u[1].file_uploader("Custom architecture: model_config.json", type=["json"],
                                      key=form.key(form.UP_CONFIG),
                                      help="Only for an architecture open_clip does not know by name.")
        # no type filter on checkpoints: a pickle gets its own sentence (convert it), whatever its extension
        base_file = u[0].file_uploader("Base model (.safetensors)", key=form.key(state.UP_BASE),
                                       help="The pre-trained CLIP (image and text towers) every task starts from.")
        fts = u[1].file_uploader("Fine-tunes, one per task (.safetensors)", accept_multiple_files=True,
                                 key=form.key(state.UP_FINETUNED), help="Fine-tuned image encoders (or whole models).")
        adapter_help = ("The folder PEFT's save_pretrained writes (adapter_config.json + adapter_model.safetensors), "
                        "zipped.")
        ads = u[0].file_uploader("LoRA adapters, one zip per task", type=["zip"], accept_multiple_files=True,
                                 key=form.key(state.UP_ADAPTERS), help=adapter_help)
        llas = u[1].file_uploader("L-LoRA adapters, one zip per task", type=["zip"], accept_multiple_files=True,
                                  key=form.key(form.UP_LLORA), help=adapter_help + " L-LoRA: LoRA fine-tuned in "
                                  "its linearised form (A frozen at its initialisation); see docs/llora.md.")
        data_help = "A zip of an image folder (one sub-folder per class), or an .npz with x (uint8 images) and y."
        tests = u[0].file_uploader("Test data, one per task", type=["zip", "npz"], accept_multiple_files=True,
                                   key=form.key(state.UP_DATA), help=data_help)
        vals = u[1].file_uploader("Validation data, one per task (optional)", type=["zip", "npz"],
                                  accept_multiple_files=True, key=form.key(form.UP_VALIDATION),
                                  help=data_help + " Fisher merging and RegMean compute their statistics on it.")
        if start_file is not None:
            start = up.read_manifest(start_file.getvalue(), start_file.name)
            form.apply_start(start, start_file.file_id)
            model_config = start.get("model_config")
        if cfg_file is not None:
            model_config = up.read_config(cfg_file.getvalue())
        staged = {kind: staging.add(files, kind, st.error) for kind, files in (
            ("base", [base_file] if base_file else []), ("finetuned", fts), ("lora", ads), ("llora", llas),
            ("test", tests), ("validation", vals))}
        staging.prune()
        if staged["base"]:
            base_path, base_shown = next(iter(staged["base"].values()))
        order = [t["name"] for t in (start or {}).get("tasks", [])]
        names = [n for kind in up.CHECKPOINTS for n in staged[kind]]
        for n in sorted(set(names), key=lambda n: (order.index(n) if n in order else len(order), names.index(n))):
            tasks[n] = up.TaskFiles(n)
        for kind in (*up.CHECKPOINTS, *up.SPLITS):
            for n, (path, shown) in staged[kind].items():
                if n not in tasks:
                    st.warning(f"**{shown}** names task {n!r}, which has no fine-tune or adapter; name it after a "
                               "task's checkpoint file (e.g. mnist_test.npz for mnist.safetensors).")
                    continue
                setattr(tasks[n], kind, up.adapter_root(path) if kind in ("lora", "llora") else path)
                tasks[n].shown[kind] = shown
                if kind == "test":
                    tasks[n].classes = up.folder_classes(path)
    else:
        folder = state.kept(st.text_input, "Folder", key=form.key(state.UP_FOLDER), value="",
                            placeholder="/data/vit_b32_zoo",
                            help="base*.safetensors at the top; one sub-folder per task with a fine-tune "
                                 "(*.safetensors), adapter folders (one named llora: L-LoRA), optional test/ or "
                                 "test.npz, validation/ or validation.npz, classes.txt. Or a zoo folder (zoo.json).")
        copy = state.kept(st.checkbox, "Copy the files into the new zoo (self-contained; else it refers to them "
                          "where they are)", key=form.key(form.UP_COPY), value=False)
        if folder.strip():
            root = Path(folder.strip()).expanduser()
            base_path, found, start = up.scan_folder(root, folder.strip())
            tasks = {t.name: t for t in found}
            base_shown = base_path.name if base_path else ""
            if start is not None:
                form.apply_start(start, f"{root.resolve()}:{(root / 'zoo.json').stat().st_mtime_ns}")
                model_config = start.get("model_config")
            if (root / "model_config.json").is_file():
                model_config = up.read_config((root / "model_config.json").read_bytes())

    st.subheader("Model and prompts")
    zf = form.zoo_fields()
    if not zf.architecture:
        st.info("Name the open_clip architecture of the checkpoints.")
        st.stop()
    expected = expected_shapes(zf.architecture, json.dumps(model_config, sort_keys=True) if model_config else "")

    start_tasks = {t["name"]: t for t in (start or {}).get("tasks", [])}
    fields: dict[str, form.TaskFields] = {}
    if tasks:
        st.subheader("Tasks")
        for n, t in tasks.items():
            fields[n] = form.task_fields(t, start_tasks.get(n))
        unused = [n for n in start_tasks if n not in tasks]
        if unused:
            st.caption(f"The zoo.json also lists {', '.join(unused)}: without checkpoints here, they are left out.")

    st.subheader("Checks")
    ok = base_path is not None and verdict(f"base · {base_shown}",
                                           lambda: up.check_base(base_path, expected, zf.architecture, base_shown))
    if base_path is None:
        st.info("Add the base model (the pre-trained CLIP every task was fine-tuned from).")
    if not tasks:
        st.info("Add at least one task: a fine-tuned encoder, a LoRA and/or an L-LoRA adapter.")
        ok = False
    for n, t in tasks.items():
        classes = fields[n].classes
        if t.finetuned is not None:
            ok &= verdict(f"{n} · fine-tune {t.name_of('finetuned')}", lambda t=t: up.check_finetuned(
                t.finetuned, expected, zf.tuned_prefix, t.name_of("finetuned")))
        for kind in ("lora", "llora"):
            if getattr(t, kind) is not None:
                ok &= verdict(f"{n} · {up.KIND_NAMES[kind]} {t.name_of(kind)}", lambda t=t, kind=kind:
                              up.check_adapter(getattr(t, kind), expected, t.name_of(kind), kind))
        for split in up.SPLITS:
            if getattr(t, split) is not None:
                ok &= verdict(f"{n} · {up.KIND_NAMES[split]} {t.name_of(split)}", lambda t=t, split=split:
                              up.check_data(getattr(t, split), classes, t.name_of(split)))
        if t.test is None:
            st.warning(f"**{n}**: no test data, so accuracies cannot be computed for this task.")
        if len(classes) < 2:
            st.error(f"**{n}**: give at least two class names (the task's Classes box, one per line).")
            ok = False
    if target is not None and (target / "zoo.json").exists():
        st.error(f"A zoo named {name!r} exists already; pick another name.")
        ok = False
    if not name:
        st.info("Name the zoo to save it.")
    if st.button("Save as a new zoo", key=form.key(state.UP_SAVE), type="primary", disabled=not (ok and name)):
        from peru_core.zoo.writer import TaskInput, write_zoo

        bar = st.progress(0.0, text="Writing the zoo…")
        inputs = [TaskInput(name=n, classes=f.classes, finetuned=t.finetuned, lora=t.lora, llora=t.llora,
                            test=t.test, validation=t.validation, templates=f.templates, label=f.label,
                            synthetic=f.synthetic, source=f.source, license=f.license, extra=f.extra)
                  for (n, t), f in zip(tasks.items(), fields.values())]
        try:
            zoo = write_zoo(target, zf.architecture, base_path, inputs, description=zf.description,
                            templates=zf.templates or form.DEFAULT_TEMPLATES, tuned_prefix=zf.tuned_prefix,
                            model_config=model_config, image_mean=zf.image_mean, image_std=zf.image_std,
                            copy=(mode == "upload" or copy), on_progress=lambda f, m: bar.progress(f, text=m))
        except PeruError as e:
            raise PeruError(staging.clean(str(e))) from None
        if mode == "upload":
            staging.remove()
        form.select_in_sidebar(name)  # on the rerun below, before the success message says so
        st.session_state[form.SAVED] = {"name": zoo.name, "tasks": len(zoo.tasks),
                                        "notes": [staging.clean(n) for n in zoo.extra.get("notes", [])]}
        st.session_state[form.GEN] = st.session_state.get(form.GEN, 0) + 1  # a fresh form: uploads released
        st.rerun()
