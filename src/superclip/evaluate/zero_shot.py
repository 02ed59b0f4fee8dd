"""Zero-shot classification with clip_benchmark's metric names: acc1, acc5, mean_per_class_recall."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F


def prompts(classnames: Sequence[str], templates: Sequence[str]) -> List[str]:
    """Every class's prompts, class by class: ``template.format(c=name)``."""
    return [t.format(c=name) for name in classnames for t in templates]


def check_classes(tokenizer: Callable, classnames: Sequence[str], what: str = "classes",
                  shown: Optional[Sequence[str]] = None) -> None:
    """A one-line error unless there are two classes or more and no two names read the same to the text tower
    (equal token ids: ``Dog`` and ``dog``, ``red_car`` and ``red car`` as folder names, a name given twice), which
    makes every prompt of the two equal. Such classes get equal weights, so their scores tie on every image and
    the first always wins: the other can never be predicted. One class is right on every image, whatever the
    model. ``what`` starts the message, ``shown`` names the classes there (default: the names)."""
    from ..errors import ConfigError

    shown = list(shown or classnames)
    if len(classnames) < 2:
        raise ConfigError(f"{what}: one class only ({', '.join(map(repr, shown))}): a classifier over one class is "
                          "right on every image whatever the model; give two classes or more")
    ids = torch.as_tensor(tokenizer(list(classnames)))
    seen: Dict[bytes, int] = {}
    for i, row in enumerate(ids):
        j = seen.setdefault(row.numpy().tobytes(), i)
        if j != i:
            raise ConfigError(f"{what}: {shown[j]!r} and {shown[i]!r} read the same to the model (equal token ids, "
                              "so equal prompts): their scores would tie on every image and the first would always "
                              "win; rename or merge them")


def average_prompts(prompt_features: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C x T, D) prompt embeddings, class by class -> (C, D) class embeddings: normalised, averaged over a
    class's T prompts and normalised again (the CLIP recipe)."""
    feats = F.normalize(prompt_features.float(), dim=-1)
    return F.normalize(feats.reshape(n_classes, -1, feats.shape[-1]).mean(dim=1), dim=-1)


@torch.no_grad()
def classifier_weights(encode_text: Callable, tokenizer: Callable, classnames: Sequence[str],
                       templates: Sequence[str], device="cpu") -> torch.Tensor:
    """(C, D) class embeddings (:func:`average_prompts`), one ``encode_text`` batch per class."""
    feats = [encode_text(tokenizer([t.format(c=name) for t in templates]).to(device)) for name in classnames]
    return average_prompts(torch.cat(feats), len(classnames))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> Dict[str, Optional[float]]:
    """acc1, acc5, mean_per_class_recall from (N, C) scores and (N,) int labels, as clip_benchmark defines them.

    acc5 needs at least 5 classes: with fewer, clip_benchmark reports NaN and we report ``None`` (JSON null),
    so that the output stays valid JSON. mean_per_class_recall is the mean, over the classes present in
    ``labels``, of the share of their images predicted correctly (sklearn's balanced accuracy).
    """
    pred = logits.argmax(dim=1)
    out: Dict[str, Optional[float]] = {"acc1": (pred == labels).float().mean().item()}
    if logits.shape[1] >= 5:
        top5 = logits.topk(5, dim=1).indices
        out["acc5"] = (top5 == labels[:, None]).any(dim=1).float().mean().item()
    else:
        out["acc5"] = None
    recalls = [(pred[labels == c] == c).float().mean().item() for c in labels.unique().tolist()]
    out["mean_per_class_recall"] = sum(recalls) / len(recalls)
    return out


def zero_shot_metrics(image_features: torch.Tensor, class_weights: torch.Tensor,
                      labels: torch.Tensor) -> Dict[str, Optional[float]]:
    """Metrics from (N, D) normalised image embeddings, (C, D) class embeddings and (N,) int labels."""
    return classification_metrics(image_features.float() @ class_weights.float().T, labels)
