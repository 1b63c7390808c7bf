"""The ``frcnn`` command line: one module per command, each with ``add_parser`` and ``run``.

Every command reports an error as one line (``frcnn COMMAND: error: ...``) and exits with
status 1; ``--debug`` shows the traceback instead.
"""
import os

# The command owns its process, so it sets what the library must not: passive OpenMP waits
# (threads that spin at barriers stall each other ten-fold when another process shares the cores;
# passive waits cost ~5 % on an idle machine). libgomp reads this when torch loads; `import frcnn`
# does not load torch, so this line runs first in `frcnn ...` and `python -m frcnn ...`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .main import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]
