"""FlatMTL's REST API (FastAPI). Imports ``service`` only; never torch or ray."""
