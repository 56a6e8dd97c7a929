"""What users see: the terminal (rich, in terminal.py) and figures (matplotlib, in plots.py)."""
