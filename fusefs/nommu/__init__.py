"""A real Linux kernel without an MMU, under qemu, as the oracle of mmshim's model.

`kernel` builds riscv64 nommu kernels from Debian's ``linux-source-6.12`` once
and caches them outside the repository; `init` compiles our freestanding init
(``nommu/init.c``); `initramfs` packs it; `qemu` boots an image with it and
`console` turns what the kernel and init printed into a `console.Run`.
"""
