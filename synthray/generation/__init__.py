"""Generation: diffusers pipelines (and the controls made of real images) mapped over a prompt table by GPU actors.

Importing the package registers every generator kind (`kinds.KINDS`: diffusers, real-holdout, collapsed,
vae-reencode), as timm's `models/__init__.py` registers its architectures."""

from synthray.generation import kinds  # noqa: F401 - registers the generator kinds
