"""`python -m moda.distill`: see `moda.distill.pipeline`."""

from .pipeline import main

main()
