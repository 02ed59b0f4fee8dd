"""The checks of a training command that need no torch, run before the heavy imports: a mistake the command line
alone reveals (a missing CSV or column, an empty shard pattern, an unknown model, a bad model config) is one line
at once instead of after seconds of start-up. The trainer makes the same checks again (library users call it
directly); these call the same functions, so the messages are the same."""
from __future__ import annotations

from typing import Any, Dict

from ..config import TrainConfig
from ..data.sources import check_train_data
from ..model_check import check_model_config
from ..model_names import resolve_model_config


def preflight(cfg: TrainConfig) -> Dict[str, Any]:
    """Checks ``cfg``'s model config and training data; returns the model config (as ``--model`` names it)."""
    model_cfg = resolve_model_config(cfg.model)
    check_model_config(model_cfg)
    check_train_data(cfg)
    return model_cfg
