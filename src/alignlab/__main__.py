"""`python -m alignlab ...`: the same command as the `alignlab` script (what a Slurm job or a bare venv runs)."""

from alignlab.cli import main

raise SystemExit(main())
