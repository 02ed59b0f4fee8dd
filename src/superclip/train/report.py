"""Optional metric sinks named by ``--report-to`` (tensorboard, wandb), imported only when asked for."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from ..errors import ConfigError

KNOWN = ("tensorboard", "wandb")


class Reporters:
    """Writes each metrics dict to every requested backend; ``close()`` flushes them."""

    def __init__(self, report_to: str, run_dir: Path, config: Dict, name: str, project: str = "superclip",
                 notes: str = ""):
        self.sinks: List = []
        for backend in [b.strip() for b in report_to.split(",") if b.strip() and b.strip() != "none"]:
            if backend not in KNOWN:
                raise ConfigError(f"--report-to: unknown backend {backend!r} (known: {', '.join(KNOWN)})")
            try:
                if backend == "tensorboard":
                    from torch.utils.tensorboard import SummaryWriter

                    self.sinks.append(("tensorboard", SummaryWriter(log_dir=str(run_dir / "tensorboard"))))
                else:
                    import wandb

                    self.sinks.append(("wandb", wandb.init(project=project, name=name, notes=notes or None,
                                                           config=config, dir=str(run_dir))))
            except ImportError:
                raise ConfigError(f"--report-to {backend}: the package is not installed "
                                  f"(pip install {backend})") from None

    def log(self, metrics: Dict[str, float], step: int) -> None:
        for kind, sink in self.sinks:
            if kind == "tensorboard":
                for key, value in metrics.items():
                    if isinstance(value, (int, float)) and key != "step":
                        sink.add_scalar(f"train/{key}", value, step)
            else:
                sink.log({f"train/{k}": v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        for kind, sink in self.sinks:
            if kind == "tensorboard":
                sink.close()
            else:
                sink.finish()
