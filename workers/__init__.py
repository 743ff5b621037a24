"""Execution side of FlatMTL: the MTL core (``workers.mtl``), training engine and worker loop."""
