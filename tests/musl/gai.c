/* getaddrinfo as a musl-linked program sees it: one line per address, "NAME ADDRESS CANONNAME",
 * or "NAME ERROR <gai_strerror>" (exit 2). Usage: gai [-4|-6] NAME...
 * tests/test_resolvers.py builds it with musl-gcc: musl walks the search list only past
 * NXDOMAIN (lookup_name.c name_from_dns_search), unlike glibc, so it checks kdns's rcodes. */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	int family = AF_UNSPEC, status = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-4")) { family = AF_INET; continue; }
		if (!strcmp(argv[i], "-6")) { family = AF_INET6; continue; }
		struct addrinfo hints = {0}, *res, *ai;
		hints.ai_family = family;
		hints.ai_socktype = SOCK_STREAM;
		hints.ai_flags = AI_CANONNAME;
		int rc = getaddrinfo(argv[i], NULL, &hints, &res);
		if (rc) {
			printf("%s ERROR %s\n", argv[i], gai_strerror(rc));
			status = 2;
			continue;
		}
		for (ai = res; ai; ai = ai->ai_next) {
			char buf[INET6_ADDRSTRLEN];
			const void *addr = ai->ai_family == AF_INET
				? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
				: (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
			inet_ntop(ai->ai_family, addr, buf, sizeof buf);
			printf("%s %s %s\n", argv[i], buf, res->ai_canonname ? res->ai_canonname : "-");
		}
		freeaddrinfo(res);
	}
	fflush(stdout);
	return status;
}
