"""Prompts: the prompt table of a grid point, and the captions of real images it is made from (the captioner stage
and its backends).

Importing the package registers every captioner backend (`backends.CAPTIONERS`)."""

from synthray.prompts import backends  # noqa: F401 - registers the captioner backends
