"""`python -m transferline COMMAND ...`, the same as the `transferline` console command."""

from transferline.cli import entry_point

entry_point()
