"""`python -m genforge ...` is the `genforge` command (torchrun starts workers this way: `torchrun -m genforge`)."""
import sys

from genforge.cli import main

sys.exit(main())
