"""The training loop: set-up, epochs of ``train_step``, metrics, checkpoints and exact resume."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from .. import distributed
from ..checkpoint import load_into, read_checkpoint, resolve_pretrained, save_checkpoint
from ..config import TrainConfig
from ..data.loader import ResumableSampler, build_train_dataset, collate, seed_everything
from ..errors import CheckpointError, ConfigError
from ..evaluate.data import image_folder
from ..loss import SuperCLIPLoss
from ..model import build_model, compile_towers, get_tokenizer, get_transforms, resolve_model_config
from .engine import train_step
from .evaluation import evaluate_in_training
from .optim import build_optimizer, build_scheduler
from .report import Reporters

log = logging.getLogger(__name__)


def _autocast(precision: str, device: torch.device) -> Callable:
    if precision.startswith("amp"):
        dtype = torch.bfloat16 if precision == "amp_bf16" else torch.float16
        return lambda: torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext


def _rng_state() -> Dict[str, Any]:
    """RNG states as tensors and plain values, so the checkpoint loads with ``weights_only=True``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.logs) / (cfg.name or "superclip")


def _resume_path(cfg: TrainConfig) -> Optional[Path]:
    if cfg.resume is None:
        return None
    if cfg.resume == "latest":
        path = run_dir(cfg) / "checkpoints" / "epoch_latest.pt"
        return path if path.is_file() else None  # nothing to resume yet: start fresh, as open_clip does
    path = Path(cfg.resume)
    if not path.is_file():
        raise CheckpointError(f"--resume checkpoint not found: {path}")
    return path


def _shard_units(model) -> List[torch.nn.Module]:
    """The transformer blocks of both towers: FSDP2's all-gather units."""
    units: List[torch.nn.Module] = []
    for tower in (model.visual, model.text):
        for owner in (getattr(tower, "transformer", None), getattr(tower, "trunk", None)):
            for name in ("resblocks", "blocks"):
                units.extend(getattr(owner, name, None) or [])
    return units


class Trainer:
    """Builds everything a run needs from a :class:`TrainConfig`; :meth:`fit` trains.

    ``on_step(step, metrics)`` is called on rank 0 after every optimizer step (the CLI draws its progress bar
    with it).
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.world_size, local_rank = distributed.init_from_env()
        if cfg.device:
            self.device = torch.device(cfg.device)
        else:
            self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if cfg.global_batch_size:
            cfg.batch_size = cfg.global_batch_size // (self.world_size * cfg.accum_freq)
        seed_everything(cfg.seed)  # the same initial weights on every rank (FSDP2 does not broadcast them)

        model_cfg = resolve_model_config(cfg.model)
        if cfg.fsdp:  # fully_shard cannot shard 0-d parameters
            model_cfg["nonscalar_logit_scale"] = True
        if cfg.force_image_size:
            model_cfg["vision_cfg"]["image_size"] = cfg.force_image_size
        self.model = build_model(model_cfg)
        # one read of the checkpoint: weights now, its IDF statistics (if any) for the loss below
        pretrained_stats = load_into(self.model, resolve_pretrained(cfg.model, cfg.pretrained)) \
            if cfg.pretrained else None
        self.model.to(self.device)
        # "pure" precisions train the weights themselves in half precision (open_clip's bf16 / fp16)
        self.param_dtype = {"bf16": torch.bfloat16, "pure_bf16": torch.bfloat16, "fp16": torch.float16,
                            "pure_fp16": torch.float16}.get(cfg.precision)
        if self.param_dtype is not None:
            self.model.to(self.param_dtype)
        if cfg.force_patch_dropout is not None:
            from open_clip.transformer import PatchDropout

            self.model.visual.patch_dropout = PatchDropout(cfg.force_patch_dropout) if cfg.force_patch_dropout \
                else torch.nn.Identity()
        if cfg.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        seed_everything(cfg.seed + self.rank)  # from here on (dropout, augmentation), ranks draw differently
        self.criterion = SuperCLIPLoss(
            vocab_size=self.model.vocab_size, contrastive=cfg.contrastive, cls_weight=cfg.cls_loss_weight,
            idf=cfg.idf, local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad,
        ).to(self.device)
        if pretrained_stats and self.criterion.tracks_statistics:
            self.criterion.load_state_dict(pretrained_stats)
        if not self.criterion.needs_token_logits:  # λ = 0: the head is never used, keep it out of the optimizer
            self.model.head.requires_grad_(False)

        preprocess_train, _ = get_transforms(self.model)
        size = self.model.visual.image_size
        self.dataset = build_train_dataset(cfg, preprocess_train, get_tokenizer(self.model.config),
                                           size if isinstance(size, int) else size[0], self.rank, self.world_size)
        self.step_batch = cfg.batch_size * cfg.accum_freq
        self.streaming = isinstance(self.dataset, IterableDataset)
        if self.streaming:  # shards: an endless stream, the epoch is train_num_samples long (as open_clip)
            self.sampler = None
            self.steps_per_epoch = cfg.train_num_samples // (self.step_batch * self.world_size)
        else:
            self.sampler = ResumableSampler(len(self.dataset), cfg.seed, self.rank, self.world_size)
            self.steps_per_epoch = self.sampler.per_rank() // self.step_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"an epoch of {cfg.train_num_samples or len(self.dataset)} samples is shorter than one "
                              f"step's batch ({self.step_batch} x {self.world_size} processes)")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)

        if cfg.imagenet_val:  # fail now, not after hours of training
            image_folder(cfg.imagenet_val)
        if cfg.val_data and not Path(cfg.val_data).is_file():
            raise ConfigError(f"--val-data file not found: {cfg.val_data}")
        self.fsdp = cfg.fsdp and self.world_size > 1
        if self.fsdp:  # before the optimizer: sharding replaces the parameters
            distributed.fsdp_shard(self.model, _shard_units(self.model))
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch * cfg.epochs)
        self.scaler = torch.amp.GradScaler() if cfg.precision == "amp" and self.device.type == "cuda" else None
        self.autocast = _autocast(cfg.precision, self.device)
        self.ddp_model = self.model
        if self.world_size > 1 and not self.fsdp:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                static_graph=cfg.ddp_static_graph,
            )
        self.compile_seconds: Optional[float] = None  # the first step's time when torch.compile is on
        if cfg.torchcompile and self.fsdp:
            self.ddp_model = torch.compile(self.ddp_model)
        elif cfg.torchcompile:
            compile_towers(self.model)  # in place: the text length cropping stays eager, state-dict keys unchanged
        self.step, self.epoch, self.batch_in_epoch, self.skipped = 0, 0, 0, 0
        # shards: raw samples (good + corrupt) each data-loader worker delivered this epoch; DataLoader takes
        # whole batches from its workers in turn, so batch k of the epoch came from worker k % workers
        self.raw_consumed = [0] * max(1, cfg.workers)
        self.history: List[Dict[str, float]] = []
        self.evals: List[Dict[str, float]] = []
        self.dir = run_dir(cfg)
        path = _resume_path(cfg)
        if path is not None:
            self._load(path)

    # --- checkpoints
    def _state(self, optimizer_state: Dict[str, Any]) -> Dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "raw_consumed": list(self.raw_consumed),
                "skipped_samples": self.skipped, "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": _rng_state(), "train_config": self.cfg.to_dict(), "history": self.history,
                "world_size": self.world_size}

    def save(self, name: str) -> Path:
        path = self.dir / "checkpoints" / name
        if self.fsdp:  # gathering the shards is a collective: every rank takes part
            model_state = distributed.full_model_state_dict(self.model)
            optimizer_state = distributed.full_optimizer_state_dict(self.model, self.optimizer)
        else:
            model_state, optimizer_state = None, self.optimizer.state_dict()
        if distributed.is_main_process():
            save_checkpoint(path, self.model, self.criterion, model_state=model_state, **self._state(optimizer_state))
        distributed.barrier()
        return path

    def _load(self, path: Path) -> None:
        ckpt = read_checkpoint(path)
        if ckpt.get("format") != "superclip" or "optimizer" not in ckpt:
            raise CheckpointError(f"{path} is not a superclip training checkpoint (use --pretrained for weights)")
        if self.fsdp:
            distributed.load_full_state_dicts(self.model, self.optimizer, ckpt["model"], ckpt["optimizer"])
        else:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.criterion.load_state_dict(ckpt["loss"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch, self.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        self.skipped = ckpt.get("skipped_samples", 0)
        if len(ckpt.get("raw_consumed", [])) == len(self.raw_consumed):
            self.raw_consumed = list(ckpt["raw_consumed"])
        elif self.streaming and self.batch_in_epoch:
            log.warning("--workers changed since the checkpoint: the shard stream restarts this epoch")
        self.history = ckpt.get("history", [])
        _set_rng_state(ckpt["rng"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    # --- the loop
    def _loader(self) -> DataLoader:
        if self.streaming:
            self.dataset.stream.set_position(self.epoch, self.raw_consumed,
                                             self.batch_in_epoch % len(self.raw_consumed))
        else:
            self.sampler.set_position(self.epoch, self.batch_in_epoch * self.step_batch)
            self.dataset.epoch = self.epoch
        return DataLoader(self.dataset, batch_size=self.step_batch, sampler=self.sampler, drop_last=True,
                          num_workers=self.cfg.workers, collate_fn=collate,
                          pin_memory=self.device.type == "cuda", persistent_workers=False,
                          prefetch_factor=4 if self.cfg.workers else None)

    def fit(self, on_step: Optional[Callable[[int, Dict[str, float]], None]] = None) -> List[Dict[str, float]]:
        cfg = self.cfg
        metrics_file = self.dir / "metrics.jsonl"
        if distributed.is_main_process():
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        self.ddp_model.train()
        self.criterion.train()
        reporters = Reporters(cfg.report_to, self.dir, cfg.to_dict(), self.dir.name) \
            if distributed.is_main_process() else None
        try:
            while self.step < self.total_steps and self.epoch < cfg.epochs:
                t_last = time.perf_counter()
                for images, ids, cls_ids, skipped in self._loader():
                    images = images.to(self.device, dtype=self.param_dtype, non_blocking=True)
                    ids = ids.to(self.device, non_blocking=True)
                    if cls_ids is not None:
                        cls_ids = cls_ids.to(self.device, non_blocking=True)
                    m = train_step(self.ddp_model, self.criterion, self.optimizer, images, ids, cfg.accum_freq,
                                   cfg.grad_clip_norm, self.scaler, self.autocast, cls_ids)
                    if self.world_size > 1:  # log the global batch's losses, not rank 0's share
                        keys = ("loss", "contrastive_loss", "class_loss")
                        t = distributed.all_reduce_mean_(torch.tensor([m[k] for k in keys], dtype=torch.float64))
                        m.update(zip(keys, t.tolist()))
                    self.scheduler.step()
                    self.raw_consumed[self.batch_in_epoch % len(self.raw_consumed)] += len(ids) + skipped
                    self.step += 1
                    self.batch_in_epoch += 1
                    self.skipped += skipped
                    now = time.perf_counter()
                    m.update(step=self.step, epoch=self.epoch, lr=self.optimizer.param_groups[0]["lr"],
                             samples_per_s=self.step_batch * self.world_size / max(now - t_last, 1e-9),
                             skipped_samples=self.skipped)
                    if cfg.torchcompile and self.compile_seconds is None:
                        self.compile_seconds = m["compile_seconds"] = now - t_last
                        log.info("first (compiling) step took %.1f s", self.compile_seconds)
                    t_last = now
                    if not all(math.isfinite(m[k]) for k in ("loss", "contrastive_loss", "class_loss")):
                        raise FloatingPointError(f"non-finite loss at step {self.step}: {m['loss']}; "
                                                 "the last checkpoint is left as it was")
                    if distributed.is_main_process():
                        self.history.append(m)
                        if self.step % cfg.log_every_n_steps == 0 or self.step == self.total_steps:
                            with metrics_file.open("a") as f:
                                f.write(json.dumps(m) + "\n")
                            reporters.log(m, self.step)
                        if on_step:
                            on_step(self.step, m)
                    self._maybe_evaluate(step_end=True, metrics_file=metrics_file, reporters=reporters)
                    if cfg.save_every_n_steps and self.step % cfg.save_every_n_steps == 0:
                        self._save_step()
                    if self.step >= self.total_steps or self.batch_in_epoch >= self.steps_per_epoch:
                        break
                if self.batch_in_epoch >= self.steps_per_epoch:  # epoch finished
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    self.raw_consumed = [0] * len(self.raw_consumed)
                    self._maybe_evaluate(step_end=False, metrics_file=metrics_file, reporters=reporters)
                    if self.epoch % cfg.save_frequency == 0 or self.epoch == cfg.epochs:
                        self.save(f"epoch_{self.epoch}.pt")
            self.save("epoch_latest.pt")
        except KeyboardInterrupt:
            self.save("epoch_latest.pt")
            log.warning("interrupted at step %d: saved %s", self.step, self.dir / "checkpoints" / "epoch_latest.pt")
            raise
        finally:
            if reporters is not None:
                reporters.close()
        return self.history

    def _maybe_evaluate(self, step_end: bool, metrics_file: Path, reporters) -> None:
        """Zero-shot / validation when their step or epoch frequency comes up; rank 0 works, others wait."""
        cfg = self.cfg
        if step_end:
            zeroshot = bool(cfg.zeroshot_steps) and self.step % cfg.zeroshot_steps == 0
            val = bool(cfg.val_steps) and self.step % cfg.val_steps == 0
        else:
            zeroshot = bool(cfg.zeroshot_frequency) and self.epoch % cfg.zeroshot_frequency == 0
            val = bool(cfg.val_data) and not cfg.val_steps and self.epoch % max(1, cfg.val_frequency) == 0
        zeroshot = zeroshot and bool(cfg.imagenet_val)
        val = val and bool(cfg.val_data)
        if not (zeroshot or val):
            return
        if distributed.is_main_process():
            m = evaluate_in_training(self.model, cfg, self.device, zeroshot, val)
            m.update(step=self.step, epoch=self.epoch)
            self.evals.append(m)
            with metrics_file.open("a") as f:
                f.write(json.dumps(m) + "\n")
            reporters.log(m, self.step)
            log.info("evaluation at step %d: %s", self.step, m)
        distributed.barrier()

    def _save_step(self) -> None:
        prev = self.dir / "checkpoints" / f"step_{self.step - self.cfg.save_every_n_steps}.pt"
        self.save(f"step_{self.step}.pt")
        self.save("epoch_latest.pt")
        if self.cfg.delete_prev_step_ckpt and distributed.is_main_process():
            for p in (prev, Path(str(prev) + ".json")):
                p.unlink(missing_ok=True)
