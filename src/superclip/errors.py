"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class SuperCLIPError(Exception):
    """A mistake the user can fix (bad name, missing file, mismatched checkpoint)."""


class ConfigError(SuperCLIPError, ValueError):
    """An unknown model name, config key or option value."""


class CheckpointError(SuperCLIPError, ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model config."""
