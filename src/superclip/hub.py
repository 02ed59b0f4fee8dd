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
    if any(p in (".", "..") or "\\" in p for p in parts):  # a path inside the repository, never out of it
        raise ConfigError(f"{name!r}: '.', '..' and backslashes are not allowed in a hub name (hf-hub:ORG/REPO/FILE "
                          "names a file inside the repository)")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def unreachable_reason() -> str | None:
    """Why the hub cannot be reached now (offline mode, or one request answered by nothing within 5 s), or None.

    Asked once before resolving a name: huggingface_hub retries each unreachable request with back-off (about a
    minute for a name) and then reports a missing file; without the hub the cache is all there is."""
    import threading
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.is_offline_mode():
        return "offline mode (HF_HUB_OFFLINE)"
    found = {}

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=5).close()
            found["reason"] = None
        except urllib.error.HTTPError:
            found["reason"] = None  # an answer, whatever its status: the hub is there
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            found["reason"] = f"cannot reach {constants.ENDPOINT}: {getattr(reason, 'strerror', None) or reason}"

    # in a thread: a name lookup that gets no answer ignores the socket timeout (about 20 s here)
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout=5)
    return found.get("reason", f"no answer from {constants.ENDPOINT} within 5 s")


def _download(repo: str, filename: str, cache_dir: str | None, offline: bool = False) -> Path:
    """One file of ``repo`` from the cache or the hub (``offline``: the cache only); ``FileNotFoundError`` when it
    is in neither."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=offline))
    except EntryNotFoundError as e:  # also "not in the local cache" when offline or unreachable
        raise FileNotFoundError(filename) from e
    except RepositoryNotFoundError:
        raise ConfigError(f"hf-hub:{repo}: no such repository on the hub (or it is private or gated: log in with "
                          "`hf auth login`)") from None
    except HFValidationError as e:
        raise ConfigError(f"hf-hub:{repo}: {str(e).splitlines()[0]}") from None


def _repo_files(repo: str, cache_dir: str | None, offline: bool = False) -> list[str]:
    """The files of ``repo``: the hub's listing, or the cached snapshot's when offline / unreachable."""
    from huggingface_hub import HfApi, snapshot_download

    if not offline:
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
    why_offline = unreachable_reason()
    offline = why_offline is not None
    offline_hint = "not in the local cache, and the hub cannot be reached (offline mode or no network)"
    if filename is not None:
        try:
            return _download(repo, filename, cache_dir, offline)
        except FileNotFoundError:
            if offline:
                raise ConfigError(f"hf-hub:{repo}: file {filename!r} not found in the local cache (--cache-dir), and "
                                  f"the hub cannot be reached ({why_offline})") from None
            raise ConfigError(f"hf-hub:{repo}: file {filename!r} not found in the repository") from None
    try:
        config = _download(repo, FOLDER_CONFIG, cache_dir, offline)
    except FileNotFoundError:
        checkpoints = [f for f in _repo_files(repo, cache_dir, offline) if f.endswith(CHECKPOINT_SUFFIXES)]
        if len(checkpoints) == 1:
            return _download(repo, checkpoints[0], cache_dir, offline)
        if offline and not checkpoints:
            raise ConfigError(f"hf-hub:{repo}: no {FOLDER_CONFIG} nor checkpoint file in the local cache "
                              f"(--cache-dir), and the hub cannot be reached ({why_offline})") from None
        found = f"checkpoint files {', '.join(checkpoints[:5])}" if checkpoints else "no checkpoint file found"
        raise ConfigError(f"hf-hub:{repo}: no {FOLDER_CONFIG} ({found}); name the file: "
                          f"hf-hub:{repo}/FILE") from None
    for weights in FOLDER_WEIGHTS:
        try:
            _download(repo, weights, cache_dir, offline)
            break
        except FileNotFoundError:
            continue
    else:
        raise ConfigError(f"hf-hub:{repo}: has {FOLDER_CONFIG} but no weights ({' or '.join(FOLDER_WEIGHTS)}; "
                          f"{offline_hint}?)")
    try:
        _download(repo, HEAD_FILE, cache_dir, offline)
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
