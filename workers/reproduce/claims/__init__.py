"""One module per claim of issue 6: ``requests(context)`` names its training runs, ``analyze`` measures."""
