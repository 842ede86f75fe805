"""Evaluation and metrics: accuracy of each model on each test set, feature encoders, density/coverage (PRDC),
FD and CLIPScore.

Importing the package registers every feature encoder (`encoders.FEATURE_MODELS`)."""

from synthray.metrics import encoders  # noqa: F401 - registers the feature encoders
