"""The ``segcompass`` command line: one module per command, one parsing style (:mod:`._args`).

``main(argv)`` runs ``segcompass ARGV...`` and returns the exit status; ``python -m segcompass.commands`` works
too. Library modules never import this package; command modules import library code only when they run.
"""

from .main import COMMANDS, main

__all__ = ["COMMANDS", "main"]
