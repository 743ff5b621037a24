"""Gradient aggregators, one module each; importing this package registers them all."""

from workers.mtl.aggregators import mean  # noqa: F401
