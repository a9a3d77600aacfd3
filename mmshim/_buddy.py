"""A binary buddy allocator over frame numbers, the kernel's ``free_area[]``.

Pure bookkeeping over ints: which blocks of 2**order frames are free.  The
arena keeps the per-frame metadata in step.  Blocks are naturally aligned
(a block of order k starts at a multiple of 2**k); a block's buddy is the
block at ``pfn ^ (1 << order)``, and two free buddies merge into one block of
the next order.  Allocation takes the lowest-addressed free block of the
smallest order that fits, so runs are reproducible.
"""

from __future__ import annotations

import heapq


class BuddyAllocator:
    """Free lists per order over frames ``0 .. nr_frames-1``, all free at start."""

    def __init__(self, nr_frames: int, max_order: int) -> None:
        if nr_frames <= 0:
            raise ValueError(f"buddy allocator needs at least one frame, not {nr_frames}")
        self.nr_frames = nr_frames
        self.max_order = max_order
        self.nr_free = 0
        # free[order] is the set of free block heads; heaps[order] lists the
        # same pfns lowest first, with stale entries skipped lazily.
        self._free: list[set[int]] = [set() for _ in range(max_order + 1)]
        self._heaps: list[list[int]] = [[] for _ in range(max_order + 1)]
        pfn = 0
        while pfn < nr_frames:
            order = self.max_order
            while order and (pfn & ((1 << order) - 1) or pfn + (1 << order) > nr_frames):
                order -= 1
            self._insert(pfn, order)
            self.nr_free += 1 << order
            pfn += 1 << order

    def _insert(self, pfn: int, order: int) -> None:
        free, heap = self._free[order], self._heaps[order]
        free.add(pfn)
        heapq.heappush(heap, pfn)
        if len(heap) > 2 * len(free) + 64:
            # Stale entries (blocks merged away) leave a heap only from its
            # top; drop them all before they pile up (a sorted list is a heap).
            heap[:] = sorted(free)

    def alloc(self, order: int) -> int | None:
        """Take a block of ``2**order`` frames; its first pfn, or None if none is free."""
        if not 0 <= order <= self.max_order:
            return None
        free_lists = self._free
        have = order
        while not free_lists[have]:
            have += 1
            if have > self.max_order:
                return None
        free, heap = free_lists[have], self._heaps[have]
        while True:  # the lowest block still free; stale heap entries are skipped
            pfn = heapq.heappop(heap)
            if pfn in free:
                free.remove(pfn)
                break
        while have > order:  # split, giving the upper halves back
            have -= 1
            self._insert(pfn + (1 << have), have)
        self.nr_free -= 1 << order
        return pfn

    def alloc0_run(self, nr: int) -> tuple[int, int, list[tuple[int, int]]]:
        """Up to ``nr`` successive ``alloc(0)`` calls at once, when no order-0 block is free.

        Each such call splits the lowest block of the smallest free order k
        and takes its first frame; as the halves it gives back are then the
        only blocks below order k, the calls after it take the block's next
        frames in turn, until the block is used up.  So this takes the
        first ``m = min(nr, 2**k)`` frames of that block and frees the rest
        as the blocks those calls would have left (the binary decomposition
        of the remainder).  Returns the first pfn, ``m`` and those blocks as
        ``(pfn, order)``.  Nothing may be free at order 0; something must be
        free.
        """
        assert not self._free[0] and self.nr_free and nr > 0
        order = 1
        while not self._free[order]:
            order += 1
        free, heap = self._free[order], self._heaps[order]
        while True:
            pfn = heapq.heappop(heap)
            if pfn in free:
                free.remove(pfn)
                break
        taken = min(nr, 1 << order)
        rest: list[tuple[int, int]] = []
        start, end = pfn + taken, pfn + (1 << order)
        while start < end:
            k = ((start - pfn) & -(start - pfn)).bit_length() - 1  # its alignment
            self._insert(start, k)
            rest.append((start, k))
            start += 1 << k
        self.nr_free -= taken
        return pfn, taken, rest

    def free0(self, pfn: int) -> tuple[int, int, list[tuple[int, int]] | None]:
        """:meth:`free` of an order-0 block, without the checks an order-0 block cannot fail.

        Returns the same, except that no merge gives ``None`` for the
        absorbed blocks (the common case when the arena is full).
        """
        self.nr_free += 1
        free_lists = self._free
        buddy = pfn ^ 1
        free = free_lists[0]
        if buddy not in free or not self.max_order:
            free.add(pfn)
            heap = self._heaps[0]
            heapq.heappush(heap, pfn)
            if len(heap) > 2 * len(free) + 64:
                heap[:] = sorted(free)
            return pfn, 0, None
        absorbed = []
        order = 0
        max_order = self.max_order
        while True:  # free()'s merge loop; the first buddy is known to be free
            free.remove(buddy)  # its heap entry goes stale
            absorbed.append((buddy, order))
            if buddy < pfn:
                pfn = buddy
            order += 1
            if order == max_order:
                break
            buddy = pfn ^ (1 << order)
            free = free_lists[order]
            if buddy not in free:
                break
        self._insert(pfn, order)
        return pfn, order, absorbed

    def free(self, pfn: int, order: int) -> tuple[int, int, list[tuple[int, int]]]:
        """Give a block back, merging with free buddies.

        Returns the merged block's ``(pfn, order)`` and the free blocks it
        absorbed (``(pfn, order)`` each), so the caller can move its
        free-block marks.
        """
        if pfn & ((1 << order) - 1) or pfn + (1 << order) > self.nr_frames:
            raise ValueError(f"block pfn {pfn} order {order} is not an aligned block of the arena")
        self.nr_free += 1 << order
        absorbed = []
        free_lists = self._free
        while order < self.max_order:
            buddy = pfn ^ (1 << order)
            free = free_lists[order]
            if buddy not in free:
                break
            free.remove(buddy)  # its heap entry goes stale
            absorbed.append((buddy, order))
            if buddy < pfn:
                pfn = buddy
            order += 1
        self._insert(pfn, order)
        return pfn, order, absorbed

    def is_free_block(self, pfn: int, order: int) -> bool:
        return pfn in self._free[order]

    def largest_free_order(self) -> int:
        """Order of the largest free block, -1 if nothing is free."""
        for order in range(self.max_order, -1, -1):
            if self._free[order]:
                return order
        return -1

    def free_blocks(self) -> list[tuple[int, int]]:
        """All free blocks as sorted ``(pfn, order)``."""
        return sorted((pfn, order) for order, s in enumerate(self._free) for pfn in s)

    def free_counts(self) -> list[int]:
        """Free blocks per order, like /proc/buddyinfo."""
        return [len(s) for s in self._free]
