"""synthray: Ray sweeps that measure which text-to-image generator makes the best synthetic training data."""

__version__ = "0.1.0"
