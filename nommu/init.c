/*
 * init for a riscv64 Linux without an MMU: nommufs's oracle run.
 *
 * Freestanding (raw ecall system calls, no libc), linked as a static PIE
 * without relocations, which the kernel's ELF-FDPIC loader runs on nommu.
 * It is driven by its environment, i.e. by name=value words of the kernel
 * command line that the kernel does not know itself:
 *
 *   NOMMUFS_FS=erofs|cramfs   filesystem type to mount
 *   NOMMUFS_DEV=/dev/vda      what to mount (mtd0 for cramfs on CFI flash)
 *   NOMMUFS_READ=1            read every regular file, print its size and hash
 *   NOMMUFS_EXEC=/a:/b        map these ELF programs' segments as a loader would,
 *                             one program at a time
 *   NOMMUFS_SHOW=/sys/a:/b    print these one-line files before unmounting
 *
 * Everything it says starts with "@nommufs " on a line of its own, so that the
 * runner can tell it from the kernel's messages on the same console:
 *
 *   @nommufs step NAME T_NS             a step begins (CLOCK_MONOTONIC)
 *   @nommufs meminfo NAME KEY VALUE     one /proc/meminfo line, in kB
 *   @nommufs buddyinfo NAME LINE        one /proc/buddyinfo line (free blocks per order)
 *   @nommufs mount ERRNO                0, or the errno of mount(2)
 *   @nommufs file PATH SIZE FNV64 ERR   a file read (ERR: errno of open/read)
 *   @nommufs seg PATH OFF LEN PROT ADDR ERR  a segment mapped (ADDR in hex)
 *   @nommufs maps LINE                  /proc/self/maps while a program is mapped
 *   @nommufs step execN ...             meminfo while program N is mapped
 *   @nommufs show PATH VALUE            a file of NOMMUFS_SHOW
 *   @nommufs done                       about to power off
 */

typedef unsigned long u64;
typedef long s64;
typedef unsigned char u8;
typedef unsigned short u16;

#define SYS_mkdirat 34
#define SYS_umount2 39
#define SYS_mount 40
#define SYS_openat 56
#define SYS_close 57
#define SYS_getdents64 61
#define SYS_read 63
#define SYS_write 64
#define SYS_exit 93
#define SYS_clock_gettime 113
#define SYS_reboot 142
#define SYS_munmap 215
#define SYS_mmap 222

#define AT_FDCWD (-100)
#define O_RDONLY 0
#define O_WRONLY 1
#define O_DIRECTORY 0200000
#define MS_RDONLY 1
#define PROT_READ 1
#define PROT_WRITE 2
#define PROT_EXEC 4
#define MAP_PRIVATE 2
#define DT_DIR 4
#define DT_REG 8
#define MAX_MAPS 16

static s64 sys6(long n, long a, long b, long c, long d, long e, long f)
{
	register long a0 __asm__("a0") = a;
	register long a1 __asm__("a1") = b;
	register long a2 __asm__("a2") = c;
	register long a3 __asm__("a3") = d;
	register long a4 __asm__("a4") = e;
	register long a5 __asm__("a5") = f;
	register long a7 __asm__("a7") = n;
	__asm__ volatile("ecall"
			 : "+r"(a0)
			 : "r"(a1), "r"(a2), "r"(a3), "r"(a4), "r"(a5), "r"(a7)
			 : "memory");
	return a0;
}
#define sys3(n, a, b, c) sys6(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)

/* gcc may emit calls to these even when freestanding. */
void *memset(void *d, int c, u64 n)
{
	u8 *p = d;
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, u64 n)
{
	u8 *p = d;
	const u8 *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

static u64 slen(const char *s)
{
	u64 n = 0;
	while (s[n])
		n++;
	return n;
}

/* Output is collected into one line and written with one write(2), so that a
 * kernel message cannot land inside it. */
static char line[640];
static u64 used;

static void put(const char *s)
{
	while (*s && used < sizeof(line) - 2)
		line[used++] = *s++;
}

static void putn(const char *s, u64 n)
{
	while (n-- && *s && used < sizeof(line) - 2)
		line[used++] = *s++;
}

static void putu(u64 v)
{
	char b[24];
	int i = 0;
	do
		b[i++] = (char)('0' + v % 10);
	while (v /= 10);
	while (i && used < sizeof(line) - 2)
		line[used++] = b[--i];
}

static void puti(s64 v)
{
	if (v < 0) {
		put("-");
		v = -v;
	}
	putu((u64)v);
}

static void putx(u64 v)
{
	static const char hex[] = "0123456789abcdef";
	for (int s = 60; s >= 0; s -= 4)
		if (used < sizeof(line) - 2)
			line[used++] = hex[(v >> s) & 15];
}

static void begin(const char *what)
{
	used = 0;
	put("@nommufs ");
	put(what);
}

static void end(void)
{
	line[used++] = '\n';
	sys3(SYS_write, 1, line, used);
	used = 0;
}

static const char *getenv_(char **envp, const char *name)
{
	u64 n = slen(name);
	for (; *envp; envp++) {
		const char *e = *envp;
		u64 i = 0;
		while (i < n && e[i] == name[i])
			i++;
		if (i == n && e[n] == '=')
			return e + n + 1;
	}
	return 0;
}

static char buf[8192];

static s64 slurp(const char *path)
{
	s64 fd = sys3(SYS_openat, AT_FDCWD, path, O_RDONLY);
	if (fd < 0)
		return fd;
	s64 n = 0, r;
	while ((r = sys3(SYS_read, fd, buf + n, sizeof(buf) - 1 - n)) > 0)
		n += r;
	sys3(SYS_close, fd, 0, 0);
	buf[n] = 0;
	return r < 0 ? r : n;
}

/* Each line of a text file in buf, prefixed: "@nommufs PREFIX NAME line". */
static void print_lines(const char *prefix, const char *name, s64 n)
{
	s64 start = 0;
	for (s64 i = 0; i < n; i++) {
		if (buf[i] != '\n')
			continue;
		begin(prefix);
		if (name) {
			put(" ");
			put(name);
		}
		put(" ");
		putn(buf + start, (u64)(i - start));
		end();
		start = i + 1;
	}
}

static void write_file(const char *p, const char *s);

static void step(const char *name)
{
	struct {
		s64 sec, nsec;
	} ts = {0, 0};
	sys3(SYS_clock_gettime, 1, &ts, 0);
	begin("step ");
	put(name);
	put(" ");
	putu((u64)ts.sec * 1000000000u + (u64)ts.nsec);
	end();
	/* fold the per-CPU vmstat deltas into the totals first: without it
	 * /proc/meminfo lags by up to a threshold of pages per CPU, and a
	 * file of one or two pages does not show in Cached at all */
	write_file("/proc/sys/vm/stat_refresh", "1");
	s64 n = slurp("/proc/meminfo");
	if (n > 0)
		print_lines("meminfo", name, n);
	n = slurp("/proc/buddyinfo");
	if (n > 0)
		print_lines("buddyinfo", name, n);
}

static u64 read_file(const char *path, s64 *err, u64 *hash)
{
	u64 h = 14695981039346656037ul, size = 0;
	s64 fd = sys3(SYS_openat, AT_FDCWD, path, O_RDONLY);
	*err = 0;
	if (fd < 0) {
		*err = fd;
		*hash = h;
		return 0;
	}
	for (;;) {
		s64 r = sys3(SYS_read, fd, buf, sizeof(buf));
		if (r < 0)
			*err = r;
		if (r <= 0)
			break;
		for (s64 i = 0; i < r; i++)
			h = (h ^ (u8)buf[i]) * 1099511628211ul;
		size += (u64)r;
	}
	sys3(SYS_close, fd, 0, 0);
	*hash = h;
	return size;
}

struct dirent64 {
	u64 d_ino;
	s64 d_off;
	u16 d_reclen;
	u8 d_type;
	char d_name[];
};

static char path[512];

/* Read every regular file under path (path holds a directory of length len). */
static void walk(u64 len, int depth)
{
	char dents[1024];
	s64 fd = sys3(SYS_openat, AT_FDCWD, path, O_RDONLY | O_DIRECTORY);
	if (fd < 0 || depth > 16) {
		begin("file ");
		put(path);
		put(" 0 0 ");
		puti(fd < 0 ? fd : -40);
		end();
		if (fd >= 0)
			sys3(SYS_close, fd, 0, 0);
		return;
	}
	s64 n;
	while ((n = sys3(SYS_getdents64, fd, dents, sizeof(dents))) > 0) {
		for (s64 off = 0; off < n;) {
			struct dirent64 *d = (struct dirent64 *)(dents + off);
			off += d->d_reclen;
			const char *nm = d->d_name;
			if (nm[0] == '.' && (!nm[1] || (nm[1] == '.' && !nm[2])))
				continue;
			u64 nl = slen(nm);
			if (len + 1 + nl + 1 > sizeof(path))
				continue;
			path[len] = '/';
			memcpy(path + len + 1, nm, nl + 1);
			if (d->d_type == DT_DIR) {
				walk(len + 1 + nl, depth + 1);
			} else if (d->d_type == DT_REG) {
				s64 err;
				u64 hash, size = read_file(path, &err, &hash);
				begin("file ");
				put(path + 4); /* without "/mnt" */
				put(" ");
				putu(size);
				put(" ");
				putx(hash);
				put(" ");
				puti(err);
				end();
			}
			path[len] = 0;
		}
	}
	sys3(SYS_close, fd, 0, 0);
}

static u64 rd(const u8 *p, int n)
{
	u64 v = 0;
	while (n--)
		v = (v << 8) | p[n];
	return v;
}

/* Map the PT_LOAD segments of one ELF program (little-endian, 32 or 64 bit)
 * as a loader would: MAP_PRIVATE with the segment's protection, from the page
 * holding its first byte. Returns the number mapped into addrs/lens. */
static int load_program(const char *p, u64 *addrs, u64 *lens, int max)
{
	s64 fd = sys3(SYS_openat, AT_FDCWD, p, O_RDONLY);
	s64 n = fd < 0 ? fd : sys3(SYS_read, fd, buf, sizeof(buf));
	const u8 *h = (const u8 *)buf;
	int count = 0, wide = n > 0x40 && h[4] == 2;
	u64 phoff = wide ? rd(h + 0x20, 8) : rd(h + 0x1c, 4);
	u64 entsize = rd(h + (wide ? 0x36 : 0x2a), 2), phnum = rd(h + (wide ? 0x38 : 0x2c), 2);
	if (n >= 0 && (n < 0x34 || h[0] != 0x7f || h[1] != 'E' || h[5] != 1 ||
		       phoff + phnum * entsize > (u64)n))
		n = -8; /* ENOEXEC */
	for (u64 i = 0; n > 0 && i < phnum && count < max; i++) {
		const u8 *ph = h + phoff + i * entsize;
		u64 off = rd(ph + (wide ? 8 : 4), wide ? 8 : 4);
		u64 filesz = rd(ph + (wide ? 32 : 16), wide ? 8 : 4);
		u64 flags = rd(ph + (wide ? 4 : 24), 4);
		if (rd(ph, 4) != 1 || !filesz) /* PT_LOAD with file bytes */
			continue;
		u64 start = off & ~4095ul, len = off + filesz - start;
		int prot = (flags & 4 ? PROT_READ : 0) | (flags & 2 ? PROT_WRITE : 0) |
			   (flags & 1 ? PROT_EXEC : 0);
		s64 addr = sys6(SYS_mmap, 0, (long)len, prot, MAP_PRIVATE, fd, (long)start);
		begin("seg ");
		put(p + 4);
		put(" ");
		putu(start);
		put(" ");
		putu(len);
		put(prot & PROT_READ ? " r" : " -");
		put(prot & PROT_WRITE ? "w" : "-");
		put(prot & PROT_EXEC ? "x " : "- ");
		if (addr < 0 && addr > -4096) {
			put("0 ");
			puti(addr);
		} else {
			putx((u64)addr);
			put(" 0");
			addrs[count] = (u64)addr;
			lens[count++] = len;
		}
		end();
	}
	if (fd >= 0)
		sys3(SYS_close, fd, 0, 0);
	if (n <= 0) {
		begin("seg ");
		put(p + 4);
		put(" 0 0 --- 0 ");
		puti(n < 0 ? n : -8);
		end();
	}
	return count;
}

/* Each program of the list in turn, as its own "process" would: mapped, maps
 * and meminfo printed while mapped, then unmapped before the next. */
static void exec_programs(const char *list)
{
	u64 addrs[MAX_MAPS], lens[MAX_MAPS];
	char name[16] = "exec";
	for (u64 k = 1; *list; k++) {
		u64 n = 0;
		while (list[n] && list[n] != ':')
			n++;
		if (n + 5 > sizeof(path))
			break;
		memcpy(path, "/mnt", 4);
		memcpy(path + 4, list, n);
		path[4 + n] = 0;
		list += n + (list[n] == ':');
		int count = load_program(path, addrs, lens, MAX_MAPS);
		s64 got = slurp("/proc/self/maps");
		if (got > 0)
			print_lines("maps", 0, got);
		u64 i = 4, v = k;
		char d[8];
		int nd = 0;
		do
			d[nd++] = (char)('0' + v % 10);
		while ((v /= 10) && nd < 7);
		while (nd)
			name[i++] = d[--nd];
		name[i] = 0;
		step(name);
		while (count--)
			sys3(SYS_munmap, addrs[count], lens[count], 0);
	}
}

static void show_files(const char *list)
{
	while (*list) {
		u64 n = 0;
		while (list[n] && list[n] != ':')
			n++;
		if (n + 1 > sizeof(path))
			break;
		memcpy(path, list, n);
		path[n] = 0;
		list += n + (list[n] == ':');
		s64 got = slurp(path);
		begin("show ");
		put(path);
		put(" ");
		if (got < 0) {
			put("error ");
			puti(got);
		} else {
			putn(buf, got > 0 && buf[got - 1] == '\n' ? (u64)got - 1 : (u64)got);
		}
		end();
	}
}

static void write_file(const char *p, const char *s)
{
	s64 fd = sys3(SYS_openat, AT_FDCWD, p, O_WRONLY);
	if (fd >= 0) {
		sys3(SYS_write, fd, s, slen(s));
		sys3(SYS_close, fd, 0, 0);
	}
}

static void poweroff(void)
{
	begin("done");
	end();
	sys6(SYS_reboot, 0xfee1deadl, 672274793l, 0x4321fedcl, 0, 0, 0);
	sys3(SYS_exit, 0, 0, 0);
}

void cmain(long *sp)
{
	char **argv = (char **)(sp + 1);
	char **envp = argv + sp[0] + 1;
	const char *fs = getenv_(envp, "NOMMUFS_FS");
	const char *dev = getenv_(envp, "NOMMUFS_DEV");
	const char *rd = getenv_(envp, "NOMMUFS_READ");
	const char *progs = getenv_(envp, "NOMMUFS_EXEC");
	const char *show = getenv_(envp, "NOMMUFS_SHOW");

	sys3(SYS_mkdirat, AT_FDCWD, "/dev", 0755);
	sys3(SYS_mkdirat, AT_FDCWD, "/proc", 0555);
	sys3(SYS_mkdirat, AT_FDCWD, "/mnt", 0755);
	sys6(SYS_mount, (long)"devtmpfs", (long)"/dev", (long)"devtmpfs", 0, 0, 0);
	sys6(SYS_mount, (long)"proc", (long)"/proc", (long)"proc", 0, 0, 0);
	sys3(SYS_mkdirat, AT_FDCWD, "/sys", 0555);
	sys6(SYS_mount, (long)"sysfs", (long)"/sys", (long)"sysfs", 0, 0, 0);
	step("boot");
	if (!fs || !dev)
		poweroff();
	s64 r = sys6(SYS_mount, (long)dev, (long)"/mnt", (long)fs, MS_RDONLY, 0, 0);
	begin("mount ");
	puti(r);
	end();
	if (r < 0)
		poweroff();
	step("mount");
	if (rd && rd[0] == '1') {
		memcpy(path, "/mnt", 5);
		walk(4, 0);
		step("read");
	}
	if (progs && *progs)
		exec_programs(progs);
	if (show && *show)
		show_files(show);
	write_file("/proc/sys/vm/drop_caches", "3");
	step("drop");
	r = sys3(SYS_umount2, "/mnt", 0, 0);
	begin("umount ");
	puti(r);
	end();
	step("umount");
	poweroff();
}

__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	mv a0, sp\n"
	"	andi sp, sp, -16\n"
	"	call cmain\n"
	"1:	j 1b\n");
