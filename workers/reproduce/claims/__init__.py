"""One module per claim of the report: ``NUMBER``, ``requests(context)`` naming its training runs,
``analyze(context, results)`` measuring them into a ``ClaimResult``, and optionally ``sweeps(context)``."""
