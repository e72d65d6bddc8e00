"""``python -m videoformer`` (and ``torchrun -m videoformer``): the ``videoformer`` command."""
import sys

from .cli import main

sys.exit(main())
