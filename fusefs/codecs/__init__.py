"""Compression bindings the reader (:mod:`fusefs`) and the writer (:mod:`mkimage`) share.

Each module binds one system library through ctypes and loads it on first
use, not at import: an image, a command or a test that never touches that
codec works without the library, and one that does gets one clean
:class:`~fusefs.errors.UnsupportedFeatureError` naming the missing package.

* :mod:`fusefs.codecs.lz4` -- liblz4 (Debian ``liblz4-1``).
"""
