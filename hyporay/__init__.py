"""hyporay."""
