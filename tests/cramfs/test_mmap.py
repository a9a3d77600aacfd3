"""mmap through mmap_prepare: XIP from flash, copy on write, page-cache fallback, nommu."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusefs.budget.loader import map_executables
from fusefs.cramfs.fs import CramfsFilesystem
from fusefs.vfs import Ino, MemoryConfig, open_image, resolve
from mmshim import Page
from mmshim.mmap import (
    MAP_PRIVATE,
    MAP_SHARED,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    AddressSpace,
    MmapError,
    MmapPrepareError,
    VmAreaDesc,
    VmFlags,
)
from tests.cramfs.helpers import ELF, mkimage

ARENA = 1 << 21  # 512 frames


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("mmap")
    src = base / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "true").write_bytes(ELF.read_bytes())
    (src / "bin" / "true").chmod(0o755)
    (src / "bin" / "pagemult").write_bytes(ELF.read_bytes()[: 8 * 4096])
    (src / "bin" / "pagemult").chmod(0o755)
    (src / "data.txt").write_bytes(b"compressible text " * 3000)  # 54000 bytes, 14 pages
    return {
        "xip": mkimage(src, base / "xip.img", "-X", "-X"),
        "xip1": mkimage(src, base / "xip1.img", "-X"),
        "plain": mkimage(src, base / "plain.img"),
    }


def _open(image: Path, mm: str = "mmu", **kw: object) -> CramfsFilesystem:
    fs = open_image(image, MemoryConfig(mm=mm, arena_bytes=ARENA, **kw))  # type: ignore[arg-type]
    assert isinstance(fs, CramfsFilesystem)
    return fs


@pytest.fixture
def xipfs(images: dict[str, Path]) -> Iterator[CramfsFilesystem]:
    fs = _open(images["xip"])
    yield fs
    fs.close()


def test_readonly_mmap_of_xip_file_uses_no_frames_and_private_write_copies_one(
    xipfs: CramfsFilesystem,
) -> None:
    fs = xipfs
    ino = resolve(fs, "bin/true")
    f = fs.mappable(ino)
    space = AddressSpace(fs.arena)
    used = fs.arena.stats.frames_used
    vma = space.mmap(f, 0, f.size, PROT_READ | PROT_EXEC, MAP_PRIVATE)
    assert vma.kind == "pfnmap" and vma.vm_flags & VmFlags.VM_PFNMAP
    assert vma.read(0, f.size) == ELF.read_bytes()
    assert vma.direct_pages == vma.nr_pages == 9
    assert fs.arena.stats.frames_used == used  # zero arena frames
    with pytest.raises(MmapError) as ei:
        vma.write(0, b"x")
    assert ei.value.code == errno.EACCES
    vma.mprotect(PROT_READ | PROT_WRITE)
    vma.write(4096 + 5, b"COW")
    assert fs.arena.stats.frames_used == used + 1
    assert vma.anon_frames == 1 and vma.cow_faults == 1 and vma.direct_pages == 8
    assert vma.read(4096, 8) == ELF.read_bytes()[4096:4101] + b"COW"
    vma.write(4096 + 100, b"again")  # same page: no new frame
    assert fs.arena.stats.frames_used == used + 1
    assert fs.read(ino, 4096, 8) == ELF.read_bytes()[4096:4104]  # flash unchanged
    space.close()
    # the private copy is freed; the read() above left one (evictable) page-cache frame
    assert fs.arena.stats.frames_by_owner["other"] == 0
    assert fs.arena.stats.frames_used == used + 1


def test_shared_mappings(xipfs: CramfsFilesystem) -> None:
    fs = xipfs
    f = fs.mappable(resolve(fs, "bin/true"))
    space = AddressSpace(fs.arena)
    vma = space.mmap(f, 4096, 2 * 4096, PROT_READ, MAP_SHARED)
    assert vma.kind == "pfnmap" and vma.read(0, 4096) == ELF.read_bytes()[4096:8192]
    with pytest.raises(MmapError) as ei:
        space.mmap(f, 0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED)
    assert ei.value.code == errno.EACCES
    with pytest.raises(MmapError):
        vma.mprotect(PROT_READ | PROT_WRITE)  # no VM_MAYWRITE on a read-only file
    space.close()


def test_writable_private_mapping_goes_through_the_page_cache(xipfs: CramfsFilesystem) -> None:
    fs = xipfs
    f = fs.mappable(resolve(fs, "bin/true"))
    space = AddressSpace(fs.arena)
    vma = space.mmap(f, 0, f.size, PROT_READ | PROT_WRITE, MAP_PRIVATE)
    assert vma.kind == "pagecache" and vma.direct_pages == 0
    assert vma.read(0, f.size) == ELF.read_bytes()
    assert vma.frames == 9
    vma.write(0, b"\0")
    assert vma.anon_frames == 1
    space.close()


def test_mapping_past_eof_and_page_multiple_file_is_mixed(xipfs: CramfsFilesystem) -> None:
    fs = xipfs
    space = AddressSpace(fs.arena)
    f = fs.mappable(resolve(fs, "bin/true"))
    vma = space.mmap(f, 0, 12 * 4096, PROT_READ, MAP_PRIVATE)  # binfmt_elf maps past EOF
    assert vma.kind == "mixedmap" and vma.direct_pages == 9 and vma.frames == 0
    with pytest.raises(MmapError, match="SIGBUS"):
        vma.read(10 * 4096, 1)
    pm = fs.mappable(resolve(fs, "bin/pagemult"))
    vma = space.mmap(pm, 0, pm.size, PROT_READ, MAP_PRIVATE)
    # the last block of a page-multiple file is stored non-direct: it faults into RAM
    assert vma.kind == "mixedmap" and vma.direct_pages == 7
    assert vma.read(0, pm.size) == ELF.read_bytes()[: 8 * 4096]
    assert vma.frames == 1
    space.close()


def test_unaligned_xip_is_not_mapped_in_place_with_an_mmu(images: dict[str, Path]) -> None:
    with _open(images["xip1"]) as fs:
        assert isinstance(fs, CramfsFilesystem)
        f = fs.mappable(resolve(fs, "bin/true"))
        first, _k = fs.xip_pages(resolve(fs, "bin/true"))
        space = AddressSpace(fs.arena)
        vma = space.mmap(f, 0, f.size, PROT_READ, MAP_PRIVATE)
        assert (first % 4096 != 0) == (vma.kind == "pagecache")
        space.close()


def test_nommu_xip_in_place_and_non_xip_copy(images: dict[str, Path]) -> None:
    for key in ("xip", "xip1"):
        with _open(images[key], "nommu-contig") as fs:
            assert isinstance(fs, CramfsFilesystem)
            f = fs.mappable(resolve(fs, "bin/true"))
            space = AddressSpace(fs.arena)
            used = fs.arena.stats.frames_used
            vma = space.mmap(f, 0, f.size, PROT_READ | PROT_EXEC, MAP_PRIVATE)
            assert vma.kind == "nommu-direct" and vma.frames == 0
            assert vma.start == fs.flash.phys_base + fs.xip_pages(resolve(fs, "bin/true"))[0]
            assert vma.read(0, f.size) == ELF.read_bytes()
            assert fs.arena.stats.frames_used == used
            # private writable: always a private copy, never flash
            vma2 = space.mmap(f, 0, f.size, PROT_READ | PROT_WRITE, MAP_PRIVATE)
            assert vma2.kind == "nommu-copy" and vma2.anon_frames == 9
            space.close()
    with _open(images["plain"], "nommu-contig") as fs:
        assert isinstance(fs, CramfsFilesystem)
        f = fs.mappable(resolve(fs, "data.txt"))
        space = AddressSpace(fs.arena)
        vma = space.mmap(f, 0, f.size, PROT_READ, MAP_PRIVATE)
        assert vma.kind == "nommu-copy" and vma.anon_frames == 14
        assert vma.read(0, f.size) == b"compressible text " * 3000
        with pytest.raises(MmapError) as ei:
            space.mmap(f, 0, f.size, PROT_READ, MAP_SHARED)
        assert ei.value.code == errno.ENODEV
        with pytest.raises(MmapError) as ei:
            space.mmap(f, 0, 20 * 4096, PROT_READ, MAP_PRIVATE)  # beyond EOF
        assert ei.value.code == errno.EINVAL
        space.close()


def test_nommu_copy_fails_cleanly_when_fragmented(images: dict[str, Path]) -> None:
    with _open(images["plain"], "nommu-contig") as fs:
        assert isinstance(fs, CramfsFilesystem)
        f = fs.mappable(resolve(fs, "data.txt"))
        arena = fs.arena
        pages: list[Page] = []
        while arena.stats.frames_free:
            pages.append(arena.alloc_pages(0))
        for p in pages[::2]:
            arena.free_pages(p)  # every other frame free: nothing contiguous
        assert arena.stats.largest_free_order == 0
        before = arena.stats
        space = AddressSpace(arena)
        with pytest.raises(MmapError) as ei:
            space.mmap(f, 0, f.size, PROT_READ, MAP_PRIVATE)
        assert ei.value.code == errno.ENOMEM
        after = arena.stats
        assert (
            after.frames_used == before.frames_used and after.alloc_failures > before.alloc_failures
        )
        for p in pages[1::2]:
            arena.free_pages(p)
        vma = space.mmap(f, 0, f.size, PROT_READ, MAP_PRIVATE)  # works once defragmented
        assert vma.kind == "nommu-copy"
        space.close()


class _Rogue:
    """A file whose mmap_prepare changes what it may not."""

    writable = False

    def __init__(self, fs: CramfsFilesystem, ino: Ino, what: str) -> None:
        self.inner = fs.mappable(ino)
        self.size = self.inner.size
        self.what = what

    def mmap_prepare(self, desc: VmAreaDesc) -> None:
        if self.what == "pgoff":
            desc.pgoff += 1
        elif self.what == "write":
            desc.vm_flags |= VmFlags.VM_WRITE
        elif self.what == "maywrite-shared":
            desc.vm_flags &= ~VmFlags.VM_READ
        elif self.what == "pfnmap-partial":
            desc.vm_flags |= VmFlags.VM_PFNMAP
            desc.remap_pfn_range(0, self.inner.fs.flash, self.inner.fs.flash.base_pfn, 1)

    def fault(self, pgoff: int) -> Page:
        return self.inner.fault(pgoff)

    def read_into(self, offset: int, dest: memoryview) -> int:
        return self.inner.read_into(offset, dest)


@pytest.mark.parametrize("what", ["pgoff", "write", "maywrite-shared", "pfnmap-partial"])
def test_mmap_prepare_may_change_only_permitted_fields(xipfs: CramfsFilesystem, what: str) -> None:
    space = AddressSpace(xipfs.arena)
    rogue = _Rogue(xipfs, resolve(xipfs, "bin/true"), what)
    with pytest.raises(MmapPrepareError):
        space.mmap(rogue, 0, 4 * 4096, PROT_READ, MAP_PRIVATE)
    space.close()


@pytest.mark.parametrize("mm", ["mmu", "nommu-contig", "nommu-bounce"])
def test_loader_xip_text_costs_no_frames(images: dict[str, Path], mm: str) -> None:
    with _open(images["xip"], mm) as fs:
        reports = {r.path: r for r in map_executables(fs)}
    assert set(reports) == {"bin/true", "bin/pagemult"}
    true = reports["bin/true"]
    assert true.error is None and true.text_frames == 0 and true.direct_pages > 0
    assert true.frames == sum(s.frames for s in true.segments if "w" in s.prot) > 0
    with _open(images["plain"], mm) as fs:
        plain = {r.path: r for r in map_executables(fs)}["bin/true"]
    assert plain.direct_pages == 0 and plain.text_frames > 0
    assert plain.frames > true.frames


def test_read_through_page_cache_or_direct_from_flash(images: dict[str, Path]) -> None:
    for mode in ("pagecache", "direct"):
        with _open(images["xip"], xip_read=mode) as fs:
            ino = resolve(fs, "bin/true")
            assert fs.read(ino, 0, 1 << 20) == ELF.read_bytes()
            st = fs.memory_stats()
            if mode == "direct":
                assert st["flash_bytes_direct"] == ELF.stat().st_size
                assert st["page_cache_frames"] == 0 and st["copy_bytes"] == 0
            else:
                assert st["copy_bytes"] == ELF.stat().st_size and st["flash_bytes_direct"] == 0
                assert st["page_cache_frames"] == 9
            assert st["bytes_decompressed"] == 0
    with _open(images["plain"], xip_read="direct") as fs:
        fs.read(resolve(fs, "data.txt"), 0, 1 << 20)
        st = fs.memory_stats()
        assert st["bytes_decompressed"] == 54000 and st["page_cache_frames"] == 14


def test_small_arena_evicts_page_cache(images: dict[str, Path]) -> None:
    with open_image(images["plain"], MemoryConfig(arena_bytes=4 * 4096)) as fs:
        data = fs.read(resolve(fs, "data.txt"), 0, 1 << 20)
        assert data == b"compressible text " * 3000
        st = fs.memory_stats()
        assert st["frames_used"] <= 4 and st["evictions"] >= 10


def test_last_page_with_bytes_after_eof_is_not_mapped_from_flash(
    images: dict[str, Path], tmp_path: Path
) -> None:
    import struct

    from fusefs.cramfs.format import CRC_OFFSET, image_crc

    img = bytearray(images["xip"].read_bytes())
    with _open(images["xip"]) as fs:
        assert isinstance(fs, CramfsFilesystem)
        ino = resolve(fs, "bin/true")
        first, k = fs.xip_pages(ino)
    eof = first + ELF.stat().st_size
    img[eof + 10] = 0xAA  # cramfs_last_page_is_shared: the tail page holds foreign bytes
    struct.pack_into("<I", img, CRC_OFFSET, image_crc(img, 0, len(img)))
    bad = tmp_path / "shared-tail.img"
    bad.write_bytes(bytes(img))
    with _open(bad) as fs:
        assert isinstance(fs, CramfsFilesystem)
        f = fs.mappable(resolve(fs, "bin/true"))
        space = AddressSpace(fs.arena)
        vma = space.mmap(f, 0, f.size, PROT_READ, MAP_PRIVATE)
        assert vma.kind == "mixedmap" and vma.direct_pages == k - 1
        # the faulted page is zero past EOF; flash would have leaked 0xAA into the process
        assert vma.read(0, vma.length) == ELF.read_bytes() + bytes(vma.length - f.size)
        assert vma.frames == 1
        space.close()
