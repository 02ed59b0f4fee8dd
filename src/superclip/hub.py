"""The Hugging Face Hub: ``hf-hub:ORG/REPO[/FILE]`` names resolved to local files through ``huggingface_hub``
(its cache, ``HF_HUB_OFFLINE`` and ``--cache-dir`` honoured), and uploading an exported folder.

Two repository layouts are read: open_clip's (``open_clip_config.json`` + ``open_clip_model.safetensors`` or
``open_clip_pytorch_model.bin``, and our ``superclip_head.safetensors`` when present), and a repository holding
training checkpoints as their authors release them (name the file: ``hf-hub:ORG/REPO/epoch_32.pt``; a
repository with exactly one checkpoint file needs no file name).
"""
from __future__ import annotations

import logging
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

PREFIX = "hf-hub:"
FOLDER_CONFIG = "open_clip_config.json"
FOLDER_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HEAD_FILE = "superclip_head.safetensors"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def split_name(name: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/REPO[/FILE]`` (prefix optional) -> (``ORG/REPO``, ``FILE`` or None)."""
    ident = name.removeprefix(PREFIX)
    parts = [p for p in ident.strip("/").split("/") if p]
    if len(parts) < 2:
        raise ConfigError(f"{name!r} is not a hub name: expected hf-hub:ORG/REPO or hf-hub:ORG/REPO/FILE")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def _download(repo: str, filename: str, cache_dir: str | None) -> Path:
    """One file of ``repo`` from the cache or the hub; ``FileNotFoundError`` when it is in neither."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo, filename, cache_dir=cache_dir))
    except EntryNotFoundError as e:  # also "not in the local cache" when offline or unreachable
        raise FileNotFoundError(filename) from e
    except RepositoryNotFoundError:
        raise ConfigError(f"hf-hub:{repo}: no such repository on the hub (or it is private or gated: log in with "
                          "`hf auth login`)") from None
    except HFValidationError as e:
        raise ConfigError(f"hf-hub:{repo}: {str(e).splitlines()[0]}") from None


def _repo_files(repo: str, cache_dir: str | None) -> list[str]:
    """The files of ``repo``: the hub's listing, or the cached snapshot's when offline / unreachable."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.constants import is_offline_mode

    if not is_offline_mode():
        try:
            return list(HfApi().list_repo_files(repo))
        except Exception as e:  # no network: fall back on the cache
            log.info("listing hf-hub:%s failed (%s); using the local cache", repo, e)
    try:
        folder = Path(snapshot_download(repo, cache_dir=cache_dir, local_files_only=True))
    except Exception:
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def resolve(name: str, cache_dir: str | None = None) -> Path:
    """A local path for ``hf-hub:ORG/REPO[/FILE]``: the file, or for an open_clip-layout repository the (cache)
    folder holding its config, weights and our head file (when the repository has one)."""
    repo, filename = split_name(name)
    offline_hint = "not in the local cache, and the hub cannot be reached (offline mode or no network)"
    if filename is not None:
        try:
            return _download(repo, filename, cache_dir)
        except FileNotFoundError:
            raise ConfigError(f"hf-hub:{repo}: file {filename!r} not found (not in the repository, or "
                              f"{offline_hint})") from None
    try:
        config = _download(repo, FOLDER_CONFIG, cache_dir)
    except FileNotFoundError:
        checkpoints = [f for f in _repo_files(repo, cache_dir) if f.endswith(CHECKPOINT_SUFFIXES)]
        if len(checkpoints) == 1:
            return _download(repo, checkpoints[0], cache_dir)
        found = f"checkpoint files {', '.join(checkpoints[:5])}" if checkpoints else "no checkpoint file found"
        raise ConfigError(f"hf-hub:{repo}: no {FOLDER_CONFIG} ({found}); name the file: "
                          f"hf-hub:{repo}/FILE") from None
    for weights in FOLDER_WEIGHTS:
        try:
            _download(repo, weights, cache_dir)
            break
        except FileNotFoundError:
            continue
    else:
        raise ConfigError(f"hf-hub:{repo}: has {FOLDER_CONFIG} but no weights ({' or '.join(FOLDER_WEIGHTS)}; "
                          f"{offline_hint}?)")
    try:
        _download(repo, HEAD_FILE, cache_dir)
    except FileNotFoundError:
        pass  # a plain open_clip repository: the head starts fresh (the loader warns)
    return config.parent


def push_folder(folder: Path, repo_id: str, private: bool = False, message: str | None = None) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` to it; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder),
                                 commit_message=message or "Upload SuperCLIP model (superclip export)")
    except Exception as e:  # network, authentication, permissions: one line for the user
        raise ConfigError(f"push to hf-hub:{repo_id} failed: {str(e).strip().splitlines()[0] if str(e) else e}") \
            from None
    return str(getattr(info, "commit_url", info))
