/*
 * memhog MIB: keeps MIB of anonymous memory in use, rewriting one byte of every page in a loop,
 * until killed. The memory stress check's workload: it must survive every resize. Prints
 * "memhog ready <pid>" once all of its memory has been touched.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t len;
	unsigned char *p;
	unsigned long round = 0;

	if (argc != 2 || atol(argv[1]) <= 0) {
		fprintf(stderr, "usage: memhog MIB\n");
		return 2;
	}
	len = (size_t)atol(argv[1]) << 20;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(p, 1, len);
	printf("memhog ready %d\n", getpid());
	fflush(stdout);
	for (;;) {
		for (size_t off = 0; off < len; off += page)
			p[off] = (unsigned char)(p[off] + round);
		round++;
		usleep(1000);
	}
}
