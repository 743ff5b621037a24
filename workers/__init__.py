"""Execution side of FlatMTL: the MTL core (``flatmtl.workers.mtl``), training engine and worker loop."""
