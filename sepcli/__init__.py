"""sep: separate a recording of overlapping talkers into one track per speaker.

Library first: everything the ``sep`` command does is a function or class here.
"""
from sepcli.errors import SepError

__version__ = "0.1.0"

__all__ = ["SepError", "__version__"]
