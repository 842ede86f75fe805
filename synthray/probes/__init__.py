"""Probes: the views of the images a classifier is trained and tested on (rgb, depth, texture, low-pass, high-pass).

Importing the package registers every probe (`transforms.PROBES`)."""

from synthray.probes import transforms  # noqa: F401 - registers the probes
