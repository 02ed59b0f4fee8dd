"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class SuperCLIPError(Exception):
    """A mistake the user can fix (bad name, missing file, mismatched checkpoint)."""


class ConfigError(SuperCLIPError, ValueError):
    """An unknown model name, config key or option value."""


class CheckpointError(SuperCLIPError, ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model config."""


def require_file(path, message: str) -> None:
    """A ConfigError of one line, ``message.format(path)``, unless ``path`` is a file: the first check of every reader
    of a user's file, and of the CLI's check before the heavy imports (cli/precheck.py), so the two say the same."""
    import os

    if not os.path.isfile(path):
        raise ConfigError(message.format(path))


class TrainingError(SuperCLIPError, RuntimeError):
    """Training cannot go on: unreadable data, or too many non-finite steps in a row."""


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM stopped a run at a step boundary after saving it (not a mistake: exit 128 + signal)."""

    def __init__(self, signum: int, step: int, path):
        import signal

        self.signum, self.step, self.path = signum, step, path
        super().__init__(f"{signal.Signals(signum).name} at step {step}: saved {path}; continue with --resume latest")
