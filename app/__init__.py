"""Oceano: self-hosted face search."""

# First, before anything imports OpenCV: app.imaging sets OpenCV's own pixel limit, which OpenCV reads once at
# import (see app/imaging/limits.py).
from app import imaging as _imaging  # noqa: F401

__version__ = "0.1.0"
