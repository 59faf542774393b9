"""``python -m ssdlite``: the same command line as the ``ssdlite`` console script."""

from .cli import main

main()
