/*
 * memhog MIB: keeps MIB of anonymous memory in use until killed, as 4 MiB chunks whose pages are
 * rewritten in a loop; every pass also frees one chunk and maps a fresh one, so the workload's
 * memory keeps moving into whatever memory was plugged last (ZONE_MOVABLE), which an unplug then
 * has to migrate. The memory stress check's workload: it must survive every resize. Prints
 * "memhog ready <pid>" once all of its memory has been touched.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHUNK (4UL << 20)

static unsigned char *map_chunk(void)
{
	unsigned char *p = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	memset(p, 1, CHUNK);
	return p;
}

int main(int argc, char **argv)
{
	long page = sysconf(_SC_PAGESIZE);
	unsigned char **chunks;
	unsigned long n, round = 0;

	if (argc != 2 || atol(argv[1]) <= 0) {
		fprintf(stderr, "usage: memhog MIB\n");
		return 2;
	}
	n = ((unsigned long)atol(argv[1]) << 20) / CHUNK;
	if (n == 0)
		n = 1;
	chunks = calloc(n, sizeof(*chunks));
	for (unsigned long i = 0; i < n; i++)
		chunks[i] = map_chunk();
	printf("memhog ready %d\n", getpid());
	fflush(stdout);
	for (;;) {
		unsigned long victim = round % n;

		munmap(chunks[victim], CHUNK);
		chunks[victim] = map_chunk();
		for (unsigned long i = 0; i < n; i++)
			for (size_t off = 0; off < CHUNK; off += page)
				chunks[i][off] = (unsigned char)(chunks[i][off] + round);
		round++;
		usleep(1000);
	}
}
