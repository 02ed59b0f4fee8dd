"""Training configuration: one typed dataclass; YAML keys and CLI flags map onto its fields 1:1.

Field names are open_clip_train's argument names (``--train-data`` is ``train_data``), so the released SuperCLIP
YAML files load as they are. An unknown key is an error that names it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from .errors import ConfigError

# The demo's learning rate: at 2e-3 (and 1e-3) batch-8 training on the scenes is chaotic (one seed's CLIP-SuperCLIP
# colour gap ranged -34 to +55 points over 13 runs at 2e-3); at 5e-4 every seed lands within a few points of the
# others (docs/demo.md: the 5-seed tables and the lr sweep behind this choice).
DEMO_LR = 5e-4
# The demo's family: at DEMO_LR SuperCLIP is ahead on the textures' fine-grained ink+pattern task in every one of 5
# seeds at batch 8, while on the scenes the two models are level (docs/demo.md).
DEMO_FAMILY = "textures"
# `superclip data icons`: the @iconify/json version fetched by default (its tarball's sha256 is in data/iconify.py)
ICONIFY_VERSION = "2.2.553"

PRECISIONS = ("fp32", "amp", "amp_bf16", "amp_bfloat16", "bf16", "fp16", "pure_bf16", "pure_fp16")
DATASET_TYPES = ("auto", "csv", "synthetic", "synthetic-scenes", "synthetic-textures", "webdataset")


# (fields, lowest value, how the error says it); None is allowed for the optional fields
_BOUNDS = (
    (("accum_freq", "epochs", "log_every_n_steps", "max_nonfinite_steps", "max_steps", "train_num_samples",
      "global_batch_size", "force_image_size", "val_num_samples", "force_context_length"), 1, ">= 1"),
    (("workers", "warmup", "lock_image_unlocked_groups", "lock_text_unlocked_layers", "epochs_cooldown",
      "lr_cooldown_end", "save_frequency", "save_every_n_steps", "zeroshot_frequency", "zeroshot_steps",
      "val_steps", "val_frequency", "cls_loss_weight", "wd"), 0, ">= 0"),
)
_OPTIONAL = ("max_steps", "train_num_samples", "global_batch_size", "force_image_size", "val_num_samples",
             "force_context_length", "epochs_cooldown")


# open_clip_train options superclip does not take, each with why and what to use instead (a YAML key or flag
# naming one is a one-line error saying so, never "unknown")
_TORCHRUN = "superclip joins torchrun's process group (env://; gloo on CPU, nccl on GPU)"
REFUSED: Dict[str, str] = {
    "dist_url": f"{_TORCHRUN}: launch with torchrun --rdzv-endpoint HOST:PORT",
    "dist_backend": f"{_TORCHRUN}; the backend follows the device",
    "horovod": "launch with torchrun instead (DDP, or --fsdp)",
    "no_set_device_rank": "each process uses cuda:LOCAL_RANK; for one process on another GPU pass --device cuda:N",
    "log_local": "superclip logs from rank 0 (metrics.jsonl); per-rank output: torchrun --log-dir DIR --tee 3",
    "copy_codebase": "install the superclip version you want in the run's environment",
    "remote_sync": "sync the --logs folder with your own tool (checkpoints are written atomically)",
    "remote_sync_frequency": "sync the --logs folder with your own tool",
    "remote_sync_protocol": "sync the --logs folder with your own tool",
    "torchscript": "use --torchcompile, or superclip export --format onnx",
    "trace": "use --torchcompile, or superclip export --format onnx",
    "momentum": "superclip trains with AdamW only (SGD momentum has no meaning here): use --beta1 / --beta2",
    "coca_caption_loss_weight": "CoCa is not a SuperCLIP model: the class term's weight is --cls-loss-weight",
    "coca_contrastive_loss_weight": "CoCa is not a SuperCLIP model: the class term's weight is --cls-loss-weight",
    "distill_model": "superclip has no distillation",
    "distill_pretrained": "superclip has no distillation",
    "use_bnb_linear": "for less memory use --precision amp_bf16 or pure_bf16",
    "loss_dist_impl": "features are gathered with their gradients (exact for N processes); no other "
                      "implementation to choose (add --local-loss to save memory)",
    "image_mean": "set \"preprocess_cfg\": {\"mean\": [...]} in the model JSON (--model FILE.json): it then travels "
                  "with checkpoints and exports",
    "image_std": "set \"preprocess_cfg\": {\"std\": [...]} in the model JSON (--model FILE.json)",
    "image_interpolation": "set \"preprocess_cfg\": {\"interpolation\": ...} in the model JSON (--model FILE.json)",
    "image_resize_mode": "set \"preprocess_cfg\": {\"resize_mode\": ...} in the model JSON (--model FILE.json)",
    "aug_cfg": "superclip trains with open_clip's default augmentation (RandomResizedCrop, scale 0.9-1.0)",
}


def refusal(name: str) -> str:
    """The one-line error for an open_clip_train option superclip does not take."""
    return f"--{name.replace('_', '-')} is not supported: {REFUSED[name]}"


@dataclass
class TrainConfig:
    # --- data
    train_data: Optional[str] = field(default=None, metadata={"help": "CSV/TSV file or shard pattern; "
                                                               "unset with --dataset-type synthetic"})
    val_data: Optional[str] = field(default=None, metadata={"help": "retrieval data evaluated during training "
                                                             "(CSV/TSV, karpathy JSON or shards)"})
    compositional_val: Optional[str] = field(default=None, metadata={
        "help": "hard negatives evaluated during training, with --val-data's schedule (a SugarCrepe folder or a "
                ".json/.jsonl of {image, positive, negatives, type}; images relative to it)"})
    dataset_type: str = field(default="auto", metadata={"help": f"one of {DATASET_TYPES}"})
    train_num_samples: Optional[int] = field(default=None, metadata={"help": "samples per epoch (synthetic: "
                                                                      "dataset size)"})
    csv_img_key: str = field(default="filepath", metadata={"help": "CSV column with image paths"})
    csv_caption_key: str = field(default="title", metadata={"help": "CSV column with captions"})
    csv_separator: Optional[str] = field(default=None, metadata={"help": "CSV separator (default: a tab if the "
                                                                 "header line has one, else a comma)"})
    dataset_resampled: bool = field(default=False, metadata={"help": "shards: draw shards with replacement "
                                                              "(epochs of --train-num-samples), as open_clip"})
    train_data_upsampling_factors: Optional[str] = field(default=None, metadata={
        "help": "shards with --dataset-resampled: a weight per '::' source, e.g. 1::2 (default: by size)"})
    wds_caption_key: str = field(default="txt", metadata={"help": "webdataset caption member (or json field)"})
    wds_stall_timeout: float = field(default=300.0, metadata={"help": "seconds without a byte from a pipe: "
                                                               "shard's command before it is killed and the shard "
                                                               "skipped (counted, named in the log)"})
    long_caption_key: Optional[str] = field(default=None, metadata={"help": "second, long caption: CSV column "
                                                                     "or webdataset member / json field"})
    contrastive_caption: str = field(default="short", metadata={"help": "caption for the contrastive loss: "
                                                                 "short or long"})
    class_caption: str = field(default="short", metadata={"help": "caption for the classification loss: "
                                                           "short or long"})
    long_caption_ratio: Optional[float] = field(default=None, metadata={"help": "use the long caption with this "
                                                                         "probability, for both losses"})
    workers: int = field(default=0, metadata={"help": "data loader processes per rank"})
    val_num_samples: Optional[int] = field(default=None, metadata={"help": "evaluate retrieval on the first N "
                                                                    "images of --val-data (default: all)"})
    # --- model and loss
    model: str = field(default="SuperCLIP-Tiny", metadata={"help": "model name or JSON path"})
    pretrained: Optional[str] = field(default=None, metadata={"help": "checkpoint to start from: a file, a model "
                                                               "folder or hf-hub:ORG/REPO[/FILE]"})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "hub cache for --pretrained hf-hub: names"})
    pretrained_image: bool = field(default=False, metadata={"help": "ImageNet weights for a timm image tower "
                                                            "(timm_model_name), as open_clip"})
    lock_image: bool = field(default=False, metadata={"help": "LiT: freeze the image tower (the head still trains)"})
    lock_image_unlocked_groups: int = field(default=0, metadata={"help": "with --lock-image: leave the last N "
                                                                 "layer groups trainable"})
    lock_image_freeze_bn_stats: bool = field(default=False, metadata={"help": "with --lock-image: freeze BatchNorm "
                                                                      "running stats (timm towers)"})
    lock_text: bool = field(default=False, metadata={"help": "freeze the text tower"})
    lock_text_unlocked_layers: int = field(default=0, metadata={"help": "with --lock-text: leave the last N "
                                                                "layers trainable"})
    lock_text_freeze_layer_norm: bool = field(default=False, metadata={"help": "with --lock-text: freeze its "
                                                                       "LayerNorms too (default: they train)"})
    force_quick_gelu: bool = field(default=False, metadata={"help": "QuickGELU activations (OpenAI weights)"})
    force_context_length: Optional[int] = field(default=None, metadata={"help": "override the text context length"})
    force_custom_text: bool = field(default=False, metadata={"help": "accepted: superclip always builds open_clip's "
                                                             "CustomTextCLIP layout"})
    force_patch_dropout: Optional[float] = field(default=None, metadata={"help": "FLIP patch dropout rate"})
    force_image_size: Optional[int] = field(default=None, metadata={"help": "override the model's image size"})
    grad_checkpointing: bool = field(default=False, metadata={"help": "activation checkpointing"})
    siglip: bool = field(default=False, metadata={"help": "sigmoid loss (same as --contrastive siglip)"})
    contrastive: str = field(default="clip", metadata={"help": "clip, siglip or none"})
    cls_loss_weight: float = field(default=1.0, metadata={"help": "λ of the classification term (0 = CLIP)"})
    idf: str = field(default="online", metadata={"help": "online or off"})
    local_loss: bool = field(default=False, metadata={"help": "open_clip's --local-loss"})
    gather_with_grad: Optional[bool] = field(default=None, metadata={
        "help": "gather features with their gradients (on by default with several processes: exact)"})
    # --- optimisation
    batch_size: int = field(default=64, metadata={"help": "per process, per micro-batch"})
    global_batch_size: Optional[int] = field(default=None, metadata={"help": "sets batch_size = global / "
                                                                      "(world_size x accum_freq)"})
    accum_freq: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    epochs: int = field(default=1, metadata={"help": "epochs"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "stop after this many optimizer steps"})
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate"})
    wd: float = field(default=0.2, metadata={"help": "weight decay (not on biases, norms, logit scale)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.98, metadata={"help": "AdamW beta2"})
    eps: float = field(default=1e-6, metadata={"help": "AdamW eps"})
    warmup: int = field(default=0, metadata={"help": "linear warmup steps"})
    lr_scheduler: str = field(default="cosine", metadata={"help": "cosine, const or const-cooldown"})
    epochs_cooldown: Optional[int] = field(default=None, metadata={"help": "const-cooldown: epochs of cooldown at "
                                                                    "the end"})
    lr_cooldown_end: float = field(default=0.0, metadata={"help": "const-cooldown: learning rate at the end"})
    lr_cooldown_power: float = field(default=1.0, metadata={"help": "const-cooldown: power of the decay (1: linear)"})
    skip_scheduler: bool = field(default=False, metadata={"help": "keep --lr all run long (no warmup, no decay)"})
    opt: str = field(default="adamw", metadata={"help": "optimizer: adamw (the CLIP recipe's, the only one)"})
    use_bn_sync: bool = field(default=False, metadata={"help": "SyncBatchNorm across processes (BatchNorm towers)"})
    grad_clip_norm: Optional[float] = field(default=None, metadata={"help": "clip gradients to this norm"})
    precision: str = field(default="fp32", metadata={"help": f"one of {PRECISIONS}"})
    seed: int = field(default=0, metadata={"help": "random seed (initial weights, dropout; also the data unless "
                                                       "--data-seed is given)"})
    data_seed: Optional[int] = field(default=None, metadata={
        "help": "seed of the data alone: synthetic samples, shuffle order, caption choice, shard order (default: "
                "--seed), to vary the initial weights and the data independently"})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, cuda:N (default: cuda if any)"})
    torchcompile: bool = field(default=False, metadata={"help": "torch.compile the model (first step slower)"})
    fsdp: bool = field(default=False, metadata={"help": "shard the model with FSDP2 (fully_shard) instead of DDP"})
    ddp_static_graph: bool = field(default=False, metadata={"help": "DDP static_graph"})
    # --- logging and checkpoints
    logs: str = field(default="./logs", metadata={"help": "root folder of runs"})
    name: Optional[str] = field(default=None, metadata={"help": "run name (folder under --logs)"})
    save_frequency: int = field(default=1, metadata={"help": "save every N epochs (0: no epoch checkpoints)"})
    save_every_n_steps: int = field(default=0, metadata={"help": "also save every N steps (0: off)"})
    delete_prev_step_ckpt: bool = field(default=False, metadata={"help": "keep only the latest step checkpoint"})
    delete_previous_checkpoint: bool = field(default=False, metadata={"help": "keep only the latest epoch "
                                                                      "checkpoint"})
    save_most_recent: bool = field(default=False, metadata={"help": "accepted: epoch_latest.pt is always written"})
    resume: Optional[str] = field(default=None, metadata={"help": "checkpoint path or 'latest'"})
    report_to: str = field(default="", metadata={"help": "comma list of tensorboard, wandb"})
    wandb_project_name: str = field(default="superclip", metadata={"help": "wandb project"})
    wandb_notes: str = field(default="", metadata={"help": "wandb notes"})
    log_every_n_steps: int = field(default=10, metadata={"help": "metrics line every N steps"})
    max_nonfinite_steps: int = field(default=5, metadata={"help": "stop after this many steps in a row with a "
                                                          "non-finite loss or gradient (each is skipped)"})
    progress: bool = field(default=True, metadata={"help": "progress bar on rank 0"})
    # --- evaluation during training (accepted for the released YAML; see docs/training.md for what runs)
    zeroshot_frequency: int = field(default=0, metadata={"help": "zero-shot eval every N epochs"})
    zeroshot_steps: int = field(default=0, metadata={"help": "zero-shot eval every N steps"})
    val_steps: int = field(default=0, metadata={"help": "validation every N steps"})
    val_frequency: int = field(default=1, metadata={"help": "validation every N epochs (0: never)"})
    imagenet_val: Optional[str] = field(default=None, metadata={"help": "ImageNet val folder (any ImageFolder tree: "
                                                                  "zero-shot during training)"})
    imagenet_v2: Optional[str] = field(default=None, metadata={"help": "ImageNetV2 folder (an ImageFolder tree): "
                                                                 "zero-shot during training, as --imagenet-val"})

    def __post_init__(self):
        def check(ok, msg):
            if not ok:
                raise ConfigError(msg)

        check(self.dataset_type in DATASET_TYPES,
              f"--dataset-type must be one of {DATASET_TYPES}, got {self.dataset_type!r}")
        check(self.precision in PRECISIONS, f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        check(self.lr_scheduler in ("cosine", "const", "const-cooldown"),
              f"--lr-scheduler must be cosine, const or const-cooldown, got {self.lr_scheduler!r}")
        check(self.lr_scheduler != "const-cooldown" or self.epochs_cooldown,
              "--lr-scheduler const-cooldown needs --epochs-cooldown N (the epochs of cooldown at the end)")
        check(self.opt.lower() == "adamw", f"--opt {self.opt}: superclip trains with AdamW only (the CLIP recipe's); "
              "drop --opt")
        check(self.contrastive in ("clip", "siglip", "none"),
              f"--contrastive must be clip, siglip or none, got {self.contrastive!r}")
        check(self.idf in ("online", "off"), f"--idf must be online or off, got {self.idf!r}")
        for names, low, what in _BOUNDS:
            for name in names:
                value = getattr(self, name)
                check((value is None and name in _OPTIONAL) or (value is not None and value >= low),
                      f"--{name.replace('_', '-')} must be {what}, got {value}")
        check(self.batch_size >= 1 or (self.batch_size == 0 and self.global_batch_size),
              f"--batch-size must be >= 1 (0 only with --global-batch-size), got {self.batch_size}")
        for name in ("lr", "eps"):
            check(getattr(self, name) > 0, f"--{name} must be > 0, got {getattr(self, name)}")
        check(self.grad_clip_norm is None or self.grad_clip_norm > 0,
              f"--grad-clip-norm must be > 0, got {self.grad_clip_norm}")
        for name in ("beta1", "beta2"):
            check(0 <= getattr(self, name) < 1, f"--{name} must be in [0, 1), got {getattr(self, name)}")
        check(self.force_patch_dropout is None or 0 <= self.force_patch_dropout < 1,
              f"--force-patch-dropout must be in [0, 1), got {self.force_patch_dropout}")
        check(0 < self.wds_stall_timeout < 1e6, f"--wds-stall-timeout must be > 0 seconds (and finite), got "
              f"{self.wds_stall_timeout}")
        self.csv_separator = separator_char(self.csv_separator)  # "\\t" as typed in a shell is a tab
        for name in ("contrastive_caption", "class_caption"):
            check(getattr(self, name) in ("short", "long"),
                  f"--{name.replace('_', '-')} must be short or long, got {getattr(self, name)!r}")
        check(self.long_caption_ratio is None or 0 <= self.long_caption_ratio <= 1,
              f"--long-caption-ratio must be in [0, 1], got {self.long_caption_ratio}")
        for backend in filter(None, (b.strip() for b in self.report_to.split(","))):
            check(backend in ("tensorboard", "wandb", "none"),
                  f"--report-to: unknown backend {backend!r} (known: tensorboard, wandb)")
        # --- issue 21 (runs): values that trained nonsense or failed deep inside a run
        import math

        for name in ("lr", "eps", "wd", "cls_loss_weight", "beta1", "beta2", "grad_clip_norm", "lr_cooldown_end"):
            value = getattr(self, name)
            check(value is None or math.isfinite(value), f"--{name.replace('_', '-')} must be a finite number, "
                  f"got {value}")
        for name in ("seed", "data_seed"):  # torch's generators take 64 bits; ranks and epochs are added to them
            value = getattr(self, name)
            check(value is None or abs(value) < 2 ** 62, f"--{name.replace('_', '-')} must be an integer between "
                  f"-2**62 and 2**62, got {value}")
        check(self.name is None or (self.name not in (".", "..") and "/" not in self.name and "\\" not in self.name),
              f"--name must be a folder name (the run folder is --logs/NAME), got {self.name!r}")
        if self.siglip:
            self.contrastive = "siglip"
        if self.precision == "amp_bfloat16":  # the released YAML's spelling
            self.precision = "amp_bf16"

    @property
    def seed_of_data(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES = {f.name for f in fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """YAML values as the field expects (``1e-3`` is a string in YAML 1.1; ``512_000_000`` an int)."""
    ftype = {f.name: f.type for f in fields(TrainConfig)}[name]
    if value is None:
        return None
    wanted = next((t for t in ("float", "int", "bool", "str") if t in ftype), "str")
    if isinstance(value, (list, dict)):
        raise ConfigError(f"config key {name!r}: expected one {wanted} value, got {value!r}")
    try:
        if wanted == "float":
            return float(value)
        if wanted == "int" and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(str(value).replace("_", "")) if not isinstance(value, float) else int(value)
        if wanted == "bool":
            if isinstance(value, str):
                if value.lower() not in ("1", "true", "yes", "0", "false", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {name!r}: cannot read {value!r} as {wanted}") from None
    return str(value) if wanted == "str" else value


def load_yaml(path: str) -> Dict[str, Any]:
    """Keys of a training YAML (open_clip_train names), checked against :class:`TrainConfig`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of keys to values")
    for key in data:
        if key.replace("-", "_") in REFUSED:
            raise ConfigError(f"config file {path}: {refusal(key.replace('-', '_'))}")
        if key.replace("-", "_") not in FIELD_NAMES:
            raise ConfigError(f"unknown key {key!r} in config file {path}")
    return {key.replace("-", "_"): _coerce(key.replace("-", "_"), v) for key, v in data.items()}


def separator_char(separator: Optional[str]) -> Optional[str]:
    """``--csv-separator`` as one character: ``\\t`` as typed in a shell (open_clip_train's ``--csv-separator
    "\\t"``, which pandas reads as a tab) is a tab; a value of another length is a one-line error."""
    if separator is None:
        return None
    if separator in ("\\t", "tab"):
        return "\t"
    if len(separator) != 1:
        raise ConfigError(f"--csv-separator must be one character (e.g. ',' or a tab), got {separator!r}")
    return separator


def make_config(file_values: Dict[str, Any], overrides: Dict[str, Any]) -> TrainConfig:
    """File values, then command-line overrides; ``batch_size: 0`` (released YAML) defers to global_batch_size."""
    values = {**file_values, **overrides}
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}")
    return TrainConfig(**values)
