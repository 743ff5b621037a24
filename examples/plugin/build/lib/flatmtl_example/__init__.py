"""An example FlatMTL plugin: the ``sines`` problem and the ``two_towers`` model."""
