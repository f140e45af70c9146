"""The ``fq-export`` command line (the application layer: nothing in the core package imports it).

``main`` (in :mod:`.main`) parses and dispatches to one module per subcommand: :mod:`.layer_error`,
:mod:`.quantize`, :mod:`.eval` (with its library :mod:`.evaluate`) and :mod:`.export` (``export``
and ``run``). What they share lives in :mod:`.common`, which imports none of them.
"""
from .common import UserError, load_quantized
from .main import build_parser, main

__all__ = ["UserError", "build_parser", "load_quantized", "main"]
