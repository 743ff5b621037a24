"""Loss weightings, one module each; importing this package registers them all."""

from workers.mtl.weightings import ew  # noqa: F401
