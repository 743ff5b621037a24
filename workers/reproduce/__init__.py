"""The reproduction report: the papers' claims measured at CPU scale by ``flatmtl reproduce``.

``pipeline.reproduce`` trains the runs every claim needs (``runs``), hands each claim module under
``claims/`` the records to analyze, and writes ``docs/results.md`` with the figures, configs and a
verdict per claim computed from the numbers (``verdict``).
"""
