"""open_clip imported without the optional libraries a model does not use.

open_clip's package imports transformers (for Hugging Face text towers, ``text_cfg.hf_model_name``) and timm (for
timm image towers, ``vision_cfg.timm_model_name``) whenever they are installed: about 0.9 s of the ~4 s its import
takes on a 2-core machine, paid by every command for models that use neither. A command that knows its model config
before anything has imported open_clip calls :func:`import_open_clip_for` with it; open_clip then comes up as it does
where those libraries are not installed (its own fallback), and they stay importable for everything else (the
transformers export imports transformers itself). :func:`check_buildable` makes a later model that would need them
a one-line error instead of open_clip's "pip install" advice.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .errors import ConfigError
from .model_names import resolve_model_config

log = logging.getLogger(__name__)

# the libraries left out of open_clip's import in this process
_LEFT_OUT: List[str] = []


def needed_libraries(model_cfg: Dict[str, Any]) -> Dict[str, bool]:
    """{library: whether ``model_cfg`` needs it} for open_clip's optional libraries."""
    return {"transformers": bool((model_cfg.get("text_cfg") or {}).get("hf_model_name")),
            "timm": bool((model_cfg.get("vision_cfg") or {}).get("timm_model_name"))}


def import_open_clip_for(model_cfg: Dict[str, Any]) -> None:
    """Import open_clip, leaving out the optional libraries ``model_cfg`` does not need (nothing happens when
    open_clip is imported already, or a library is: then it is open_clip's as usual)."""
    if "open_clip" in sys.modules:
        return
    left_out = [name for name, needed in needed_libraries(model_cfg).items() if not needed and name not in sys.modules]
    for name in left_out:
        sys.modules[name] = None  # an import of it raises ImportError: open_clip's fallback for a missing library
    try:
        import open_clip  # noqa: F401
    finally:
        for name in left_out:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    _LEFT_OUT.extend(left_out)
    if left_out:
        log.debug("open_clip imported without %s (the model does not use them)", ", ".join(left_out))


def check_buildable(model_cfg: Dict[str, Any]) -> None:
    """A model needing a library that open_clip was imported without (in this process) is a one-line error."""
    missing = [name for name, needed in needed_libraries(model_cfg).items() if needed and name in _LEFT_OUT]
    if missing:
        raise ConfigError(f"this process imported open_clip without {' and '.join(missing)} for another model "
                          "(superclip.lean_import); build this model in a new process")


def model_config_hint(model: Optional[str], pretrained: Optional[str]) -> Optional[Dict[str, Any]]:
    """The tower config a command will build, read without torch or open_clip where it can be: ``--model`` (a
    name or JSON), a model folder's ``open_clip_config.json``, or the ``CHECKPOINT.json`` that
    :func:`superclip.save_checkpoint` writes beside every checkpoint. None when only loading would tell (then
    open_clip is imported whole). Only the towers' library keys are read from it; the checkpoint stays the truth."""
    if model is not None and not str(model).startswith(("hf-hub:", "local-dir:")) and not Path(str(model)).is_dir():
        return resolve_model_config(model)  # a model folder as --model brings its config (and weights): read below
    where = str(pretrained if model is None else model) if (pretrained or model) else None
    if where is None or where.startswith("hf-hub:"):
        return None
    path = Path(where.removeprefix("local-dir:"))
    candidates = [path / "open_clip_config.json"] if path.is_dir() else [Path(str(path) + ".json")]
    for candidate in candidates:
        try:
            meta = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        config = meta.get("config") or meta.get("model_cfg") if isinstance(meta, dict) else None
        if isinstance(config, dict):
            return config
    return None
