/*
 * contract-probe: asks the running kernel for what a NeonVM compute's userspace needs, one item
 * per line on stdout:
 *
 *     PROBE <item> ok <detail>
 *     PROBE <item> fail <ERRNO-NAME> <detail>
 *
 * The harness (harness/boot/checks/contract.py) maps each failed item to the capability of
 * configs/contract.toml it proves. `contract-probe all COREDIR` runs every item;
 * `contract-probe prjquota DEVICE DIR` sets a 1 MiB project quota on DIR (on DEVICE's mounted
 * filesystem) and checks that writing past it fails with EDQUOT.
 * Built static for the guest's arch; exits 0 when every item passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/fs.h>
#include <linux/io_uring.h>
#include <linux/membarrier.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/quota.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef PRJQUOTA
#define PRJQUOTA 2
#endif

static int failures;

static void ok(const char *item, const char *detail)
{
	printf("PROBE %s ok %s\n", item, detail);
}

static void fail(const char *item, int err, const char *detail)
{
	const char *name = err ? strerrorname_np(err) : NULL;
	printf("PROBE %s fail %s %s\n", item, name ? name : "-", detail);
	failures++;
}

static void probe_madvise(void)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t len = 16 * page;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return fail("madvise", errno, "mmap");
	memset(p, 1, len);
	if (madvise(p, len / 2, MADV_DONTNEED))
		return fail("madvise", errno, "madvise(MADV_DONTNEED)");
	if (p[0] != 0)
		return fail("madvise", 0, "MADV_DONTNEED left the page's old contents");
	if (madvise(p + len / 2, len / 2, MADV_FREE))
		return fail("madvise", errno, "madvise(MADV_FREE)");
	munmap(p, len);
	ok("madvise", "MADV_DONTNEED and MADV_FREE");
}

static void probe_inotify(void)
{
	char buf[4096] __attribute__((aligned(8)));
	char path[64];
	int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);

	if (fd < 0)
		return fail("inotify", errno, "inotify_init1");
	if (inotify_add_watch(fd, "/tmp", IN_CREATE) < 0)
		return fail("inotify", errno, "inotify_add_watch(/tmp)");
	snprintf(path, sizeof(path), "/tmp/inotify-probe.%d", getpid());
	close(open(path, O_CREAT | O_WRONLY, 0600));
	unlink(path);
	if (read(fd, buf, sizeof(buf)) <= 0)
		return fail("inotify", errno, "no IN_CREATE event for a new file");
	close(fd);
	ok("inotify", "IN_CREATE event seen");
}

static void probe_io_uring(void)
{
	struct io_uring_params params;
	int fd;

	memset(&params, 0, sizeof(params));
	fd = syscall(__NR_io_uring_setup, 4, &params);
	if (fd < 0)
		return fail("io_uring", errno, "io_uring_setup");
	close(fd);
	ok("io_uring", "io_uring_setup(4)");
}

static void probe_bpf(void)
{
	union bpf_attr attr;
	int fd;

	memset(&attr, 0, sizeof(attr));
	attr.map_type = BPF_MAP_TYPE_ARRAY;
	attr.key_size = 4;
	attr.value_size = 8;
	attr.max_entries = 1;
	fd = syscall(__NR_bpf, BPF_MAP_CREATE, &attr, sizeof(attr));
	if (fd < 0)
		return fail("bpf", errno, "bpf(BPF_MAP_CREATE)");
	close(fd);
	ok("bpf", "BPF_MAP_CREATE array map");
}

static void probe_memfd(void)
{
	int fd = memfd_create("contract-probe", MFD_CLOEXEC | MFD_ALLOW_SEALING);

	if (fd < 0)
		return fail("memfd", errno, "memfd_create");
	if (ftruncate(fd, 65536) || fcntl(fd, F_ADD_SEALS, F_SEAL_GROW) < 0)
		return fail("memfd", errno, "ftruncate/F_ADD_SEALS");
	close(fd);
	ok("memfd", "memfd_create + seal");
}

static void probe_membarrier(void)
{
	long mask = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);

	if (mask < 0)
		return fail("membarrier", errno, "membarrier(QUERY)");
	if (!(mask & MEMBARRIER_CMD_PRIVATE_EXPEDITED))
		return fail("membarrier", 0, "no MEMBARRIER_CMD_PRIVATE_EXPEDITED");
	ok("membarrier", "QUERY lists PRIVATE_EXPEDITED");
}

static void probe_rseq(void)
{
	char detail[64];

	/* glibc registers rseq for every thread at start; __rseq_size is 0 when the kernel refused. */
	if (__rseq_size == 0) {
		long rc = syscall(__NR_rseq, NULL, 0, 0, 0);
		return fail("rseq", rc < 0 ? errno : 0, "glibc could not register rseq");
	}
	snprintf(detail, sizeof(detail), "registered by glibc (%u bytes)", __rseq_size);
	ok("rseq", detail);
}

static void probe_fhandle(void)
{
	struct file_handle *fh = malloc(sizeof(*fh) + MAX_HANDLE_SZ);
	int mount_id;

	fh->handle_bytes = MAX_HANDLE_SZ;
	if (name_to_handle_at(AT_FDCWD, "/tmp", fh, &mount_id, 0))
		return fail("fhandle", errno, "name_to_handle_at(/tmp)");
	free(fh);
	ok("fhandle", "name_to_handle_at(/tmp)");
}

static void probe_quotactl(void)
{
	if (quotactl(QCMD(Q_SYNC, USRQUOTA), NULL, 0, NULL))
		return fail("quotactl", errno, "quotactl(Q_SYNC)");
	ok("quotactl", "quotactl(Q_SYNC)");
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_TRUNC);
	int rc;

	if (fd < 0)
		return -1;
	rc = write(fd, text, strlen(text)) == (ssize_t)strlen(text) ? 0 : -1;
	close(fd);
	return rc;
}

static void probe_coredump(const char *dir)
{
	struct rlimit unlimited = { RLIM_INFINITY, RLIM_INFINITY };
	char path[512], detail[600];
	struct stat st;
	int status;
	pid_t pid;

	mkdir(dir, 0755);
	if (write_file("/proc/sys/kernel/core_pattern", "core") || write_file("/proc/sys/kernel/core_uses_pid", "1"))
		return fail("coredump", errno, "cannot set core_pattern/core_uses_pid");
	pid = fork();
	if (pid < 0)
		return fail("coredump", errno, "fork");
	if (pid == 0) {
		if (chdir(dir) || setrlimit(RLIMIT_CORE, &unlimited))
			_exit(3);
		signal(SIGABRT, SIG_DFL);
		abort();
	}
	if (waitpid(pid, &status, 0) != pid)
		return fail("coredump", errno, "waitpid");
	if (!WIFSIGNALED(status) || !WCOREDUMP(status))
		return fail("coredump", 0, "the crashing child dumped no core");
	snprintf(path, sizeof(path), "%s/core.%d", dir, pid);
	if (stat(path, &st) || st.st_size == 0)
		return fail("coredump", errno, "WCOREDUMP set but no core.<pid> file");
	snprintf(detail, sizeof(detail), "%s (%lld bytes)", path, (long long)st.st_size);
	unlink(path);
	ok("coredump", detail);
}

static void probe_file(const char *item, const char *path, const char *want)
{
	char buf[256] = "", detail[400];
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return fail(item, errno, path);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return fail(item, errno, path);
	buf[n] = 0;
	if (want && strncmp(buf, want, strlen(want))) {
		snprintf(detail, sizeof(detail), "%s reads %.40s, not %s", path, buf, want);
		return fail(item, 0, detail);
	}
	ok(item, path);
}

static void probe_accounting(void)
{
	if (access("/proc/self/io", R_OK))
		return fail("accounting", errno, "/proc/self/io (TASK_IO_ACCOUNTING)");
	probe_file("accounting", "/proc/self/schedstat", NULL);
}

/*
 * What the runner does to the Postgres data directory: a project ID inherited by everything below
 * it, and a block limit for that project. Writing past the limit must fail with EDQUOT.
 */
static int probe_prjquota(const char *device, const char *dir)
{
	struct if_dqinfo info;
	struct if_dqblk limit;
	struct fsxattr fsx;
	char path[512], buf[65536];
	int fd, err = 0;
	unsigned int id = 4242;
	long written = 0;

	if (quotactl(QCMD(Q_GETINFO, PRJQUOTA), device, 0, (caddr_t)&info))
		return fail("prjquota", errno, "quotactl(Q_GETINFO, PRJQUOTA): project quota is not on"), 1;
	mkdir(dir, 0755);
	fd = open(dir, O_RDONLY | O_DIRECTORY);
	if (fd < 0 || ioctl(fd, FS_IOC_FSGETXATTR, &fsx))
		return fail("prjquota", errno, "FS_IOC_FSGETXATTR on the data directory"), 1;
	fsx.fsx_projid = id;
	fsx.fsx_xflags |= FS_XFLAG_PROJINHERIT;
	if (ioctl(fd, FS_IOC_FSSETXATTR, &fsx))
		return fail("prjquota", errno, "FS_IOC_FSSETXATTR (project ID) on the data directory"), 1;
	close(fd);
	memset(&limit, 0, sizeof(limit));
	limit.dqb_bhardlimit = 1024; /* 1024 KiB */
	limit.dqb_bsoftlimit = 1024;
	limit.dqb_valid = QIF_BLIMITS;
	if (quotactl(QCMD(Q_SETQUOTA, PRJQUOTA), device, id, (caddr_t)&limit))
		return fail("prjquota", errno, "quotactl(Q_SETQUOTA) of a 1 MiB project limit"), 1;
	/* Quota limits do not apply to CAP_SYS_RESOURCE: write as an unprivileged user, as Postgres does. */
	chmod(dir, 0777);
	snprintf(path, sizeof(path), "%s/fill", dir);
	{
		int pipefd[2];
		struct { long written; int err; } res = { 0, 0 };
		pid_t pid;

		if (pipe(pipefd))
			return fail("prjquota", errno, "pipe"), 1;
		pid = fork();
		if (pid < 0)
			return fail("prjquota", errno, "fork"), 1;
		if (pid == 0) {
			close(pipefd[0]);
			if (setgroups(0, NULL) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534)) {
				res.err = errno;
			} else if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0) {
				res.err = errno;
			} else {
				memset(buf, 'x', sizeof(buf));
				while (res.written < 4L << 20) {
					ssize_t n = write(fd, buf, sizeof(buf));
					if (n < 0 || fsync(fd)) {
						res.err = errno;
						break;
					}
					res.written += n;
				}
				close(fd);
			}
			if (write(pipefd[1], &res, sizeof(res)) != sizeof(res))
				_exit(3);
			_exit(0);
		}
		close(pipefd[1]);
		if (read(pipefd[0], &res, sizeof(res)) != sizeof(res))
			return fail("prjquota", errno, "no result from the unprivileged writer"), 1;
		close(pipefd[0]);
		waitpid(pid, NULL, 0);
		written = res.written;
		err = res.err;
	}
	unlink(path);
	if (err != EDQUOT) {
		snprintf(path, sizeof(path), "wrote %ld bytes past a 1 MiB project quota (stopped by %s)", written,
			 err ? strerrorname_np(err) : "nothing");
		return fail("prjquota", err, path), 1;
	}
	snprintf(path, sizeof(path), "project quota on; EDQUOT after %ld bytes under a 1 MiB limit", written);
	ok("prjquota", path);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4 && !strcmp(argv[1], "prjquota"))
		return probe_prjquota(argv[2], argv[3]);
	if (argc != 3 || strcmp(argv[1], "all")) {
		fprintf(stderr, "usage: contract-probe all COREDIR | contract-probe prjquota DEVICE DIR\n");
		return 2;
	}
	probe_madvise();
	probe_inotify();
	probe_io_uring();
	probe_bpf();
	probe_memfd();
	probe_membarrier();
	probe_rseq();
	probe_fhandle();
	probe_quotactl();
	probe_coredump(argv[2]);
	probe_accounting();
	probe_file("syncookies", "/proc/sys/net/ipv4/tcp_syncookies", NULL);
	probe_file("printk-time", "/sys/module/printk/parameters/time", "Y");
	printf("PROBE-DONE %d\n", failures);
	return failures ? 1 : 0;
}
