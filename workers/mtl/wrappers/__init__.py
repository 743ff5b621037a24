"""Step wrappers (plain and sharpness-aware), one module each; importing registers them all."""

from workers.mtl.wrappers import none, sam  # noqa: F401
