"""``nommufs mkimage erofs``: EROFS images the Linux kernel mounts, built without root."""

from __future__ import annotations
