"""Datasets: CSV/TSV, procedurally generated scenes; a resumable, seeded sampler.

The names load their module on first use (PEP 562): the torch-free modules of this package (csv, sources) are
imported by the command line's checks before torch is."""

__all__ = ["ResumableSampler", "build_train_dataset"]


def __getattr__(name: str):
    if name in __all__:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'superclip.data' has no attribute {name!r}")
