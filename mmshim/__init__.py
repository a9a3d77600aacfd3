"""mmshim: a userspace model of the kernel's page allocator, vmap and page cache."""

from __future__ import annotations
