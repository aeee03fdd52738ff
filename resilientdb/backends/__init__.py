"""Backend adapters: ``base`` (the contract), ``registry`` (which adapter serves which scheme),
``_kit`` (the mechanics every adapter shares) and one room per driver (``postgres``, ``mysql``,
``sqlite``): the only modules that import a driver. See docs/design.md, "The parts"."""
