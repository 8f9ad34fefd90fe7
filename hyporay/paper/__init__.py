"""The reproduction of the paper: its published numbers, the grid, the claims and the report."""
