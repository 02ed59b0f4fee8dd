"""Model configs by name, JSON path or dict, resolved without importing torch or open_clip.

superclip's own configs ship in ``superclip/model_configs``; open_clip's names are read from the JSON files its
package ships (``open_clip.get_model_config`` once open_clip is imported, which also knows the configs a program
added with ``open_clip.add_model_config``)."""
from __future__ import annotations

import copy
import importlib.util
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .errors import ConfigError

CONFIG_PACKAGE = "superclip.model_configs"
ModelCfg = Union[str, Path, Dict[str, Any]]


def list_models() -> list:
    """Names of the model configs shipped with superclip (open_clip's own names work too)."""
    files = resources.files(CONFIG_PACKAGE).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".json"))


def _open_clip_config(name: str) -> Optional[Dict[str, Any]]:
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"].get_model_config(name)
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "model_configs" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def resolve_model_config(cfg: ModelCfg) -> Dict[str, Any]:
    """Turn a registered name, a JSON path or a dict into a model config dict (a fresh copy).

    Accepted names: superclip's configs (``list_models()``), then any open_clip model name. The official
    SuperCLIP JSON format (``vision_cfg.output_tokens``, ``clstext_cfg``) is accepted as-is.
    """
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    name = str(cfg)
    path = Path(name)
    if name.endswith(".json") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"model config file not found: {name}")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"model config {name} is not valid JSON: {e}") from None
    if name in list_models():
        return json.loads(resources.files(CONFIG_PACKAGE).joinpath(name + ".json").read_text())
    oc_cfg = _open_clip_config(name)
    if oc_cfg is not None:
        return copy.deepcopy(oc_cfg)
    raise ConfigError(
        f"unknown model {name!r}: not a JSON file, not one of superclip's models "
        f"({', '.join(list_models())}) nor an open_clip model name"
    )
