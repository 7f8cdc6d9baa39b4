"""comp: a text-classification competition toolkit."""

__version__ = "0.1.0"
