"""``python -m multitask``: the same command line as the ``multitask`` console script."""

from .cli import main

main()
