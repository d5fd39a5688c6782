"""`python -m hf_pbu.cli unlearn ...` (and `accelerate launch -m hf_pbu.cli unlearn ...`)."""

from . import main

main()
