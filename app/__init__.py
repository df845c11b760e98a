"""Oceano: self-hosted face search."""

__version__ = "0.1.0"
