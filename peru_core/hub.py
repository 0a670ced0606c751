"""``hf://owner/repo[@revision][/subpath]`` references, resolved to local files through ``huggingface_hub``'s cache.

The public checkpoints that reproduce PERU's setting (https://arxiv.org/abs/2310.01886) live on the Hugging Face
hub (FusionBench's ``tanganke/clip-vit-base-patch32_<task>``, their LoRA and L-LoRA adapters, the ``tanganke/<task>``
parquet test sets). Anywhere a checkpoint, adapter, zoo or dataset path is accepted, such a reference works too: it
resolves to the file or folder in the cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``, read at each call), downloading what is missing once, with a progress bar, unless
``HF_HUB_OFFLINE`` is set; then a missing file is one sentence naming the repository and how to fetch it.

This is the only module that contacts the hub; nothing else in peru_core does (open_clip models are built with
``pretrained=None``). The syntax is ``huggingface_hub``'s own (:func:`huggingface_hub.parse_hf_uri`);
``hf://owner/repo`` means a model repository for checkpoints and a dataset repository for test data, and an explicit
``hf://datasets/...`` or ``hf://models/...`` overrides that.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from peru_core.errors import PeruError
from peru_core.types import Progress, report

SCHEME = "hf://"
# What a bare repository reference means for each kind of input.
MODEL_FILES = ("model.safetensors",)  # transformers' single-file export (CLIPModel, CLIPVisionModel)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "linearized_adapter_model.safetensors")
_TRUE = {"1", "on", "yes", "true"}


def is_hub_ref(value: object) -> bool:
    """True for a string (not a ``Path``: ``Path`` collapses ``//``) that starts with ``hf://``."""
    return isinstance(value, str) and value.startswith(SCHEME)


@dataclass(frozen=True)
class HubRef:
    """A parsed reference: repository, its type (``model`` or ``dataset``), revision and path inside it."""

    text: str  # as the user wrote it, for messages
    repo_id: str
    repo_type: str
    revision: Optional[str]
    subpath: str

    def fetch_hint(self) -> str:
        """The command that downloads this reference into the cache (for messages)."""
        cmd = f"hf download {self.repo_id}"
        if self.repo_type != "model":
            cmd += f" --repo-type {self.repo_type}"
        if self.revision:
            cmd += f" --revision {self.revision}"
        return cmd


def parse_ref(text: str, default_type: str = "model") -> HubRef:
    """Parse ``hf://[models/|datasets/]owner/repo[@revision][/subpath]``; one-sentence PeruError when malformed."""
    from huggingface_hub import constants, parse_hf_uri
    from huggingface_hub.errors import HfUriError

    try:
        uri = parse_hf_uri(text)
    except HfUriError as e:
        raise PeruError(f"{text!r} is not a valid Hugging Face reference ({e.msg.strip()}); write it as "
                        "hf://owner/repo[@revision][/path].") from None
    explicit = text[len(SCHEME):].split("/", 1)[0] in constants.HF_URI_TYPE_PREFIXES
    repo_type = uri.type if explicit else default_type
    if repo_type not in ("model", "dataset"):
        raise PeruError(f"{text} names a {repo_type} repository; only model and dataset repositories hold "
                        "checkpoints and test sets.")
    return HubRef(text, uri.id, repo_type, uri.revision, uri.path_in_repo.strip("/"))


def cache_dir() -> Path:
    """The hub cache as the environment says now (``huggingface_hub`` reads it only once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expanduser(home)) / "hub"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now: use the cache only."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _progress_class(on_progress: Progress, what: str):
    """A tqdm class that also reports to ``on_progress`` (the dashboard); the terminal bar stays."""
    from tqdm.auto import tqdm

    class _Reporting(tqdm):  # type: ignore[misc, valid-type]
        def update(self, n=1):  # noqa: ANN001 - tqdm's signature
            out = super().update(n)
            if self.total:
                report(on_progress, self.n / self.total, f"downloading {what}")
            return out

    return _Reporting if on_progress is not None else None


def _missing(ref: HubRef, what: str) -> PeruError:
    return PeruError(f"{ref.text}: {what} is not in the Hugging Face cache {cache_dir()} and HF_HUB_OFFLINE is set; "
                     f"fetch it once with the network (`{ref.fetch_hint()}`, or unset HF_HUB_OFFLINE) or point "
                     "HF_HOME at a cache that holds it.")


def _hub_error(ref: HubRef, e: Exception, what: str) -> PeruError:
    """One sentence for whatever ``huggingface_hub`` raised."""
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    if isinstance(e, GatedRepoError):
        return PeruError(f"{ref.text} is a gated repository; accept its terms on the hub and log in with "
                         "`hf auth login`, then try again.")
    if isinstance(e, RepositoryNotFoundError):
        return PeruError(f"{ref.text}: no {ref.repo_type} repository {ref.repo_id!r} on the Hugging Face hub (or it "
                         "is private: log in with `hf auth login`); check the name.")
    if isinstance(e, RevisionNotFoundError):
        return PeruError(f"{ref.text}: repository {ref.repo_id!r} has no revision {ref.revision!r}; check the part "
                         "after '@'.")
    if isinstance(e, LocalEntryNotFoundError):
        if offline():
            return _missing(ref, what)
        return PeruError(f"{ref.text}: {what} could not be downloaded (the hub was not reachable) and is not in the "
                         f"cache {cache_dir()}; check the network, or fetch it elsewhere with `{ref.fetch_hint()}`.")
    if isinstance(e, EntryNotFoundError):
        return PeruError(f"{ref.text}: repository {ref.repo_id!r} has no {what}; check the path after the "
                         "repository name.")
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return PeruError(f"{ref.text}: {what} could not be fetched ({first}); check the reference and the network.")


def _download(ref: HubRef, filename: str, on_progress: Progress, *, missing_ok: bool = False) -> Optional[Path]:
    """The cached file (downloaded when missing and allowed); ``None`` when it does not exist and ``missing_ok``."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(huggingface_hub.hf_hub_download(
            ref.repo_id, filename, repo_type=ref.repo_type, revision=ref.revision, cache_dir=cache_dir(),
            local_files_only=offline(), tqdm_class=_progress_class(on_progress, f"{ref.repo_id}/{filename}")))
    except EntryNotFoundError as e:  # not on the hub, or (offline) not in the cache
        if missing_ok and (offline() or not isinstance(e, LocalEntryNotFoundError)):
            return None
        raise _hub_error(ref, e, f"file {filename!r}") from None
    except Exception as e:  # noqa: BLE001 - every hub error becomes one sentence
        raise _hub_error(ref, e, f"file {filename!r}") from None


def resolve_file(text: str, *, defaults: Sequence[str] = MODEL_FILES, default_type: str = "model",
                 on_progress: Progress = None) -> Path:
    """The local path of the file ``text`` names (a checkpoint): ``hf://owner/repo/path/file`` or, for a bare
    repository (or folder), the first of ``defaults`` it holds."""
    ref = parse_ref(text, default_type)
    if ref.subpath and "." in ref.subpath.rsplit("/", 1)[-1]:
        path = _download(ref, ref.subpath, on_progress)
        assert path is not None
        return path
    folder = f"{ref.subpath}/" if ref.subpath else ""
    for name in defaults:
        path = _download(ref, folder + name, on_progress, missing_ok=True)
        if path is not None:
            return path
    if offline():
        raise _missing(ref, " or ".join(repr(folder + n) for n in defaults))
    raise PeruError(f"{text} holds no {' or '.join(defaults)}; name the safetensors file in the reference "
                    f"({text.rstrip('/')}/FILE.safetensors).")


def resolve_folder(text: str, *, patterns: Optional[Sequence[str]] = None, default_type: str = "model",
                   what: str = "the folder", on_progress: Progress = None) -> Path:
    """The local folder ``text`` names (an adapter, a zoo, a parquet dataset), with the files matching
    ``patterns`` (relative to that folder; ``None``: all) downloaded when missing."""
    import huggingface_hub

    ref = parse_ref(text, default_type)
    prefix = f"{ref.subpath}/" if ref.subpath else ""
    allow = [prefix + p for p in patterns] if patterns is not None else ([prefix + "*"] if prefix else None)
    try:
        snap = Path(huggingface_hub.snapshot_download(
            ref.repo_id, repo_type=ref.repo_type, revision=ref.revision, cache_dir=cache_dir(),
            local_files_only=offline(), allow_patterns=allow,
            tqdm_class=_progress_class(on_progress, ref.repo_id)))
    except Exception as e:  # noqa: BLE001
        raise _hub_error(ref, e, what) from None
    folder = snap / ref.subpath if ref.subpath else snap
    if not folder.is_dir() or not any(folder.iterdir()):
        if offline():
            raise _missing(ref, what)
        raise PeruError(f"{text}: repository {ref.repo_id!r} has no {what} at {ref.subpath or 'its root'!r}; check "
                        "the path after the repository name.")
    return folder


def resolve_adapter(text: str, on_progress: Progress = None) -> Path:
    """The local folder of a PEFT (or FusionBench L-LoRA) adapter named by ``text``."""
    folder = resolve_folder(text, patterns=ADAPTER_FILES, what="adapter folder", on_progress=on_progress)
    if not (folder / "adapter_config.json").is_file():
        ref = parse_ref(text)
        if offline():
            raise _missing(ref, "adapter_config.json")
        raise PeruError(f"{text} holds no adapter_config.json; name the folder of a PEFT adapter.")
    return folder


def local_path(value: str | os.PathLike, kind: str = "file", on_progress: Progress = None) -> Path:
    """``value`` as a local path: ``hf://`` references resolved (``kind``: "file", "adapter", "zoo" or "folder"),
    anything else returned as a ``Path`` unchanged."""
    if not is_hub_ref(value):
        return Path(value).expanduser()
    text = str(value)
    if kind == "file":
        return resolve_file(text, on_progress=on_progress)
    if kind == "adapter":
        return resolve_adapter(text, on_progress)
    return resolve_folder(text, what="zoo folder" if kind == "zoo" else "folder", on_progress=on_progress)
