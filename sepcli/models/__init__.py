"""Model families. Importing this package registers every family with
:mod:`sepcli.registry`; add a new module to ``_MODULES`` to register it."""
from importlib import import_module

_MODULES = ("conv_tasnet", "deep_clustering", "upit_lstm", "lstm_tasnet", "sudormrf", "ensemble")

for _name in _MODULES:
    import_module(f"{__name__}.{_name}")
