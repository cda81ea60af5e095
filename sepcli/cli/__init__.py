"""The ``sep`` command line. Thin: each command parses its options, makes one
library call and prints. Library errors (:class:`~sepcli.errors.SepError`)
become a one-line ``Error: ...`` message with exit status 1.

* :mod:`~sepcli.cli.app`: the ``sep`` group (errors, logging, ``-h``);
* :mod:`~sepcli.cli.options`: option parsing shared by several commands;
* one module per group of commands: :mod:`~sepcli.cli.models`,
  :mod:`~sepcli.cli.evaluate`, :mod:`~sepcli.cli.training` (``mix``, ``train``),
  :mod:`~sepcli.cli.separate`, :mod:`~sepcli.cli.streaming` (``stream``, ``bench``);
* :mod:`~sepcli.cli.console`: ``sep separate``'s progress bars and per-file lines.

Adding a command: decorate with ``@main.command()`` in one of those modules,
give every option a ``help=`` and put an ``Example:`` block in the docstring
(shown by ``-h``).
"""
from sepcli.cli.app import main
from sepcli.cli.evaluate import evaluate_cmd
from sepcli.cli.models import models_cmd
from sepcli.cli.separate import separate_cmd
from sepcli.cli.streaming import bench_cmd, stream_cmd
from sepcli.cli.training import mix_cmd, train_cmd

__all__ = ["main", "bench_cmd", "evaluate_cmd", "mix_cmd", "models_cmd", "separate_cmd", "stream_cmd",
           "train_cmd"]
