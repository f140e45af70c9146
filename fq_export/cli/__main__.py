"""``python -m fq_export.cli``: the same as the ``fq-export`` command."""
import sys

from .main import main

sys.exit(main())
