"""``python -m superclip.cli ...``, as ``python -m superclip ...``."""
import sys

from . import main

sys.exit(main())
