"""Prompts: the prompt table of a grid point, and the captions of real images it is made from (the captioner stage
and its backends)."""
