"""Upload page: each file checked in one sentence; a valid set saved as a zoo under $PERU_HOME/zoos/<name>."""
from __future__ import annotations

import io
import json
import shutil
import zipfile

from app_helpers import ok, open_page
from tiny_zoo import ARCH, TASKS, TINY_CONFIG

from peru_core.zoo.manifest import load_zoo
from ui import state

CLASSES = "\n".join(f"{t}: {', '.join(c)}" for t, c in TASKS.items())


def _zip(folder) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in folder.iterdir():
            z.write(p, p.name)
    return buf.getvalue()


def _common(at, name: str, mode: str):
    ok(at.text_input(key=state.UP_NAME).input(name).run())
    ok(at.selectbox(key=state.UP_ARCH).set_value("other").run())
    ok(at.text_input(key="up_arch_other").input(ARCH).run())
    ok(at.radio(key="up_mode").set_value(mode).run())
    return at


def test_upload_checks_each_file_and_saves_a_zoo(app, tiny_zoo_dir, peru_home):
    at = _common(open_page(app, "pages/5_Upload.py"), "mine", "upload")
    z = tiny_zoo_dir
    at.file_uploader(key="up_config").set_value(("model_config.json", json.dumps(TINY_CONFIG).encode(),
                                                 "application/json"))
    at.file_uploader(key=state.UP_BASE).set_value(("base.safetensors", (z / "base.safetensors").read_bytes(),
                                                   "application/octet-stream"))
    at.file_uploader(key=state.UP_FINETUNED).set_value(
        [(f"{t}.safetensors", (z / "finetuned" / f"{t}.safetensors").read_bytes(), "application/octet-stream")
         for t in TASKS] + [("broken.safetensors", b"not a checkpoint at all", "application/octet-stream")])
    at.file_uploader(key=state.UP_ADAPTERS).set_value(("stripes.zip", _zip(z / "lora" / "stripes"), "application/zip"))
    at.file_uploader(key=state.UP_DATA).set_value(
        [(f"{t}.npz", (z / "data" / f"{t}_test.npz").read_bytes(), "application/octet-stream") for t in TASKS])
    at.text_area(key=state.UP_CLASSES).input(CLASSES + "\nbroken: a, b")
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "broken" in errors[0]  # one sentence, for the one bad file
    assert at.button(key=state.UP_SAVE).disabled
    ok(at.file_uploader(key=state.UP_FINETUNED).set_value(
        [(f"{t}.safetensors", (z / "finetuned" / f"{t}.safetensors").read_bytes(), "application/octet-stream")
         for t in TASKS]).run())
    assert not at.button(key=state.UP_SAVE).disabled
    ok(at.button(key=state.UP_SAVE).click().run())
    zoo = load_zoo(peru_home / "zoos" / "mine")
    assert zoo.task_names == list(TASKS) and zoo.task("stripes").lora is not None and zoo.model_config
    assert not (peru_home / "uploads" / "mine" / "base").exists()  # staged checkpoint copies are dropped
    at = ok(at.switch_page("app.py").run())  # the new zoo is selected in the sidebar
    assert at.radio(key=state.ZOO_KIND).value == "uploaded"
    assert at.selectbox(key=state.ZOO_UPLOADED).value == "mine"


def test_folder_mode_reads_checkpoints_in_place(app, tiny_zoo_dir, peru_home, tmp_path):
    src = tmp_path / "bring"
    src.mkdir()
    shutil.copy(tiny_zoo_dir / "base.safetensors", src / "base.safetensors")
    (src / "model_config.json").write_text(json.dumps(TINY_CONFIG))
    for t, classes in TASKS.items():
        (src / t).mkdir()
        shutil.copy(tiny_zoo_dir / "finetuned" / f"{t}.safetensors", src / t / "finetuned.safetensors")
        shutil.copy(tiny_zoo_dir / "data" / f"{t}_test.npz", src / t / "test.npz")
        (src / t / "classes.txt").write_text("\n".join(classes))
    at = _common(open_page(app, "pages/5_Upload.py"), "fromdisk", "folder")
    ok(at.text_input(key=state.UP_FOLDER).input(str(src)).run())
    assert sum("✅" in m.value for m in at.markdown) == 1 + 2 * len(TASKS)
    ok(at.button(key=state.UP_SAVE).click().run())
    zoo = load_zoo(peru_home / "zoos" / "fromdisk")
    assert zoo.task("blobs").finetuned == (src / "blobs" / "finetuned.safetensors").resolve()


def test_extract_zip_leaves_nothing_for_a_bad_zip(tmp_path):
    """A bad or unsafe zip leaves no folder behind (a rerun would take an empty one for the adapter); a good one
    unpacks to its content."""
    import pytest

    from peru_core.errors import PeruError
    from ui import upload as up

    with pytest.raises(PeruError, match="not a valid zip"):
        up.extract_zip(b"not a zip", tmp_path / "bad")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../escape.txt", "x")
    with pytest.raises(PeruError, match="unsafe path"):
        up.extract_zip(buf.getvalue(), tmp_path / "unsafe")
    assert list(tmp_path.iterdir()) == []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("adapter/adapter_config.json", "{}")
    root = up.extract_zip(buf.getvalue(), tmp_path / "good")
    assert root == tmp_path / "good" / "adapter" and (root / "adapter_config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["good"]
