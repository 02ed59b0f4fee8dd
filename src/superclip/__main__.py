"""``python -m superclip ...`` (what ``torchrun --nproc_per_node N -m superclip train ...`` runs)."""
import sys

from .cli import main

sys.exit(main())
