"""Training: the classifier architectures, the recipe, and the loop Ray Train runs.

Importing the package registers every architecture (`archs.ARCHS`)."""

from synthray.training import archs  # noqa: F401 - registers the architectures
