"""What the command line alone reveals, checked before torch, open_clip or numpy is imported (issue 29): a missing
input file or folder, a missing checkpoint, an unknown or malformed model. A mistake is one line at once instead of
after seconds of start-up. The library makes the same checks again when the command runs (its users call it
directly); the messages here are the library's, word for word, so a user sees the same line either way.

Nothing here imports more than the standard library and superclip's torch-free modules."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, Optional

from ..data.csv import CSV_NOT_FOUND
from ..errors import CheckpointError, ConfigError, require_file
from ..hub import FOLDER_CONFIG, PREFIX
from ..lean_import import import_open_clip_for, model_config_hint
from ..model_check import check_model_config
from ..model_names import list_models


def _may_be_pretrained_tag(model: Optional[str], pretrained: str) -> bool:
    """``--pretrained`` may be an open_clip tag (``openai``, ``laion2b_s34b_b79k``) of an open_clip model name:
    only open_clip's registry, imported with torch, can tell; a path-like value or one of our models' is a file."""
    if model is None or str(model) in list_models() or str(model).endswith(".json") or os.sep in str(model):
        return False
    return not any(c in pretrained for c in (os.sep, "/", "."))


def model_source(model: Optional[str], pretrained: Optional[str]) -> Optional[Dict[str, Any]]:
    """Checks ``--model`` / ``--pretrained`` as far as files and names tell (no hub look-up, no checkpoint read);
    returns the tower config they name where it can be read without torch (else None)."""
    if pretrained is not None:
        where = str(pretrained)
        if where.startswith("local-dir:"):
            folder = where[len("local-dir:"):]
            if not (Path(folder) / FOLDER_CONFIG).is_file():
                raise CheckpointError(f"{where}: not a model folder (no {FOLDER_CONFIG} in {folder})")
        elif not where.startswith(PREFIX) and not os.path.exists(where) and \
                not _may_be_pretrained_tag(model, where):
            raise CheckpointError(f"checkpoint file not found: {where}")
    hint = model_config_hint(model, pretrained)
    if hint is not None and model is not None and not Path(str(model)).is_dir():
        check_model_config(hint)  # as building it would
    return hint


def lean_open_clip(hint: Optional[Dict[str, Any]]) -> None:
    """open_clip without transformers / timm when the model ``hint`` names uses neither (~1 s of its import);
    open_clip as usual where the model is only known once its checkpoint is read."""
    if hint is not None:
        import_open_clip_for(hint)


def files(paths: Iterable[str], what: str = "image") -> None:
    for path in paths:
        if not os.path.exists(path):
            raise ConfigError(f"{what} not found: {path}")


def lines_file(path: Optional[str], what: str) -> None:
    """A file of one item a line (``read_lines``'s first check)."""
    if path is not None:
        require_file(path, f"{what} file not found: {{}}")


def folder(path: Optional[str], message: str = "folder not found: {}") -> None:
    if path is not None and not Path(path).is_dir():
        raise ConfigError(message.format(path))


def index_folder(path: str) -> None:
    """The folder of an index exists (``Layout.no_index``'s message). A folder without a manifest is the command's
    to judge, under the folder's lock: a build may be writing its first manifest."""
    from ..search.layout import Layout

    layout = Layout(path)
    if not layout.root.is_dir():
        raise layout.no_index()


def index_sources(sources: Iterable[str]) -> None:
    """Each SOURCE of ``index build`` / ``add`` exists (``search.sources.source_kind``'s and the CSV reader's
    messages, on the path as the index stores it); shard patterns and ``pipe:`` commands are the reader's."""
    from ..search.names import display

    for source in sources:
        if source.startswith("pipe:") or ".tar" in source:
            continue
        path = os.path.realpath(source)
        if source.lower().endswith((".csv", ".tsv")):
            require_file(path, CSV_NOT_FOUND)
        elif not os.path.exists(path):
            raise ConfigError(f"source not found: {display(path)}")
