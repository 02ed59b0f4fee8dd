"""LiT and fine-tuning flags (open_clip's --lock-*, --pretrained-image), the learning-rate schedules open_clip_train
offers, and flag parity with open_clip_train 3.3's own parser."""
import argparse

import pytest
import torch

from superclip import cli
from superclip.config import REFUSED, TrainConfig, load_yaml
from superclip.errors import ConfigError
from superclip.train.optim import build_scheduler
from superclip.train.trainer import Trainer

from .test_train import _cfg


def _train(tmp_path, steps=3, **kw):
    """(weights before, trainer after ``steps`` optimizer steps at a high learning rate)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(_cfg(tmp_path, max_steps=steps, lr=1e-2, warmup=0, wd=0.0, **kw))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    return before, trainer


def _changed(before, trainer):
    after = trainer.model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def _in_optimizer(trainer):
    ids = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    state = {id(p) for p in trainer.optimizer.state}
    return {n for n, p in trainer.model.named_parameters() if id(p) in ids}, \
        {n for n, p in trainer.model.named_parameters() if id(p) in state}


def test_lock_image_freezes_the_image_tower_bit_for_bit(tmp_path):
    before, trainer = _train(tmp_path, lock_image=True)
    changed = _changed(before, trainer)
    visual = {k for k in before if k.startswith("clip.visual.")}
    assert not changed & visual  # every image-tower tensor bit-identical
    assert {"head.fc.weight", "clip.text.token_embedding.weight", "clip.logit_scale"} <= changed  # the rest trains
    in_groups, with_state = _in_optimizer(trainer)
    assert not any(n.startswith("clip.visual.") for n in in_groups | with_state)
    assert "head.fc.weight" in with_state


def test_lock_image_unlocked_groups_trains_exactly_the_last_group(tmp_path):
    before, trainer = _train(tmp_path, lock_image=True, lock_image_unlocked_groups=1)
    visual_changed = {k for k in _changed(before, trainer) if k.startswith("clip.visual.")}
    assert visual_changed == {"clip.visual.proj"}  # open_clip's last group of a ViT: the projection
    before, trainer = _train(tmp_path / "2", lock_image=True, lock_image_unlocked_groups=2)
    visual_changed = {k for k in _changed(before, trainer) if k.startswith("clip.visual.")}
    last_block = {k for k in before if k.startswith("clip.visual.transformer.resblocks.1.")}
    assert visual_changed == {"clip.visual.proj", "clip.visual.ln_post.weight", "clip.visual.ln_post.bias"} | last_block


def test_lock_text_freezes_the_text_tower(tmp_path):
    before, trainer = _train(tmp_path, lock_text=True, lock_text_freeze_layer_norm=True)
    text = {k for k in before if k.startswith("clip.text.")}
    assert not _changed(before, trainer) & text
    assert not any(n.startswith("clip.text.") for n in _in_optimizer(trainer)[0])
    # open_clip's default (no --lock-text-freeze-layer-norm): the locked tower's LayerNorms still train
    before, trainer = _train(tmp_path / "2", lock_text=True)
    text_changed = {k for k in _changed(before, trainer) if k.startswith("clip.text.")}
    norms = {k for k in text if ".ln_" in k}
    assert text_changed == norms and len(norms) == 2 * 2 * 2 + 2  # ln_1, ln_2 of 2 blocks + ln_final (w, b)
    # the last layer group: the projection
    before, trainer = _train(tmp_path / "3", lock_text=True, lock_text_unlocked_layers=1,
                             lock_text_freeze_layer_norm=True)
    assert {k for k in _changed(before, trainer) if k.startswith("clip.text.")} == {"clip.text.text_projection"}


def test_lock_sub_flags_without_lock_are_an_error(tmp_path):
    with pytest.raises(ConfigError, match="only apply with --lock-image"):
        Trainer(_cfg(tmp_path, lock_image_unlocked_groups=1))


def test_pretrained_image_is_for_timm_towers(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="--pretrained-image loads ImageNet weights for timm image towers"):
        Trainer(_cfg(tmp_path, pretrained_image=True))
    import timm

    from superclip.train.setup import model_config

    seen = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **kw: seen.append(kw.get("pretrained")) or
                        real(*a, **{**kw, "pretrained": False}))
    cfg = _cfg(tmp_path, pretrained_image=True)
    cfg.model = {"embed_dim": 32, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "image_size": 32,
                                                 "timm_pool": "avg", "timm_proj": "linear"},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    assert model_config(cfg)["vision_cfg"]["timm_model_pretrained"] is True
    from superclip.model import build_model

    build_model(model_config(cfg))
    assert seen == [True]


def _lrs(cfg, total, per_epoch):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, total, per_epoch)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_const_cooldown_and_skip_scheduler():
    cfg = TrainConfig(lr=1.0, warmup=2, lr_scheduler="const-cooldown", epochs_cooldown=1, lr_cooldown_end=0.1,
                      lr_cooldown_power=2.0)
    lrs = _lrs(cfg, total=10, per_epoch=4)  # cooldown over the last 4 steps
    assert lrs[:6] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert lrs[6:] == pytest.approx([0.1 + 0.9 * (1 - t / 4) ** 2 for t in range(4)])
    assert _lrs(TrainConfig(lr=0.3, warmup=5, skip_scheduler=True), 6, 3) == [0.3] * 6
    with pytest.raises(ConfigError, match="needs --epochs-cooldown"):
        TrainConfig(lr_scheduler="const-cooldown")


def test_delete_previous_checkpoint_keeps_the_latest_epoch(tmp_path):
    Trainer(_cfg(tmp_path, epochs=3, train_num_samples=16, delete_previous_checkpoint=True)).fit()
    names = sorted(p.name for p in (tmp_path / "logs" / "run" / "checkpoints").glob("*.pt"))
    assert names == ["epoch_3.pt", "epoch_latest.pt"]


def _open_clip_train_parser() -> argparse.ArgumentParser:
    """open_clip_train 3.3's own parser, caught as its parse_args builds it."""
    import open_clip_train.params as params

    caught = []

    def catch(self, *a, **kw):
        caught.append(self)
        raise SystemExit

    real = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = catch
    try:
        params.parse_args([])
    except SystemExit:
        pass
    finally:
        argparse.ArgumentParser.parse_args = real
    return caught[0]


# a valid value for options whose open_clip default is not one here
SAMPLE = {"--dataset-type": "csv", "--precision": "amp_bf16", "--lr-scheduler": "cosine", "--report-to": "tensorboard",
          "--model": "SuperCLIP-Tiny", "--device": "cpu", "--opt": "adamw", "--resume": "latest",
          "--csv-separator": ",", "--beta1": "0.9", "--beta2": "0.98", "--force-patch-dropout": "0.5",
          "--train-data-upsampling-factors": "1::2"}


def test_every_open_clip_train_option_is_accepted_or_refused_with_a_reason(capsys):
    parser = cli.build_parser()
    options = [a for a in _open_clip_train_parser()._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 90
    accepted, refused = [], []
    for action in options:
        flag = action.option_strings[0]
        if action.nargs == 0:  # store_true
            argv = [flag]
        else:
            value = SAMPLE.get(flag) or (str(action.default) if isinstance(action.default, (int, float)) and
                                         not isinstance(action.default, bool) and action.default > 0 else "1")
            argv = [flag, value]
        try:
            args = parser.parse_args(["train", *argv])
        except SystemExit as e:
            err = capsys.readouterr().err.strip()
            assert e.code == 2 and len(err.splitlines()) == 1, (flag, err)
            assert "unrecognized arguments" not in err and "not supported" in err, (flag, err)
            assert action.dest in REFUSED, flag
            refused.append(flag)
            continue
        overrides = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
        TrainConfig(**overrides)  # the value is valid here too
        assert action.dest in overrides or action.dest == "debug", flag
        accepted.append(flag)
    assert len(refused) == len(REFUSED) and len(accepted) + len(refused) == len(options)
    # the named ones from the issue are accepted with their meaning
    for flag in ("--lock-image", "--pretrained-image", "--dataset-resampled", "--delete-previous-checkpoint",
                 "--wandb-project-name", "--imagenet-v2", "--val-num-samples", "--lr-cooldown-end"):
        assert flag in accepted


def test_refused_options_in_a_yaml_say_why(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("horovod: true\n")
    with pytest.raises(ConfigError, match="--horovod is not supported: launch with torchrun instead"):
        load_yaml(str(path))
