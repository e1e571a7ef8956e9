"""The commands a user runs by hand; `transferline.cli` dispatches to them."""
