"""Building EROFS and cramfs images from a directory."""

from __future__ import annotations
