"""The ``zoo`` command (a thin click group over ``zoo`` and ``runtime``)."""
