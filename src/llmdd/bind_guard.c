/* LD_PRELOAD'ed into llmdd's data-plane helper (transfer/_dataplane.py) only.
 *
 * Mooncake's P2P handshake daemon binds INADDR_ANY and its TCP transport in6addr_any (a dual-stack
 * socket), in code, with no option (read in transfer_metadata_plugin.cpp and tcp_transport.cpp;
 * 0.3.13). When LLMDD_BIND_ADDRESS names an IPv4 address, every bind to a wildcard address in this
 * process goes to that address instead: INADDR_ANY becomes it, in6addr_any (and ::ffff:0.0.0.0) its
 * IPv4-mapped form, so nothing listens beyond the interface llmdd listens on. Any other bind is
 * left alone. A malformed LLMDD_BIND_ADDRESS refuses wildcard binds (EADDRNOTAVAIL) rather than
 * let them through. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_function)(int, const struct sockaddr *, socklen_t);

static bind_function real_bind;
static int confining;           /* LLMDD_BIND_ADDRESS is set */
static int confined_valid;      /* ... and is an IPv4 address */
static struct in_addr confined;

/* Read once, at load, before any thread of the process can bind. */
__attribute__((constructor)) static void bind_guard_load(void) {
    real_bind = (bind_function)dlsym(RTLD_NEXT, "bind");
    const char *wanted = getenv("LLMDD_BIND_ADDRESS");
    confining = wanted != NULL;
    confined_valid = confining && inet_pton(AF_INET, wanted, &confined) == 1;
}

static int is_wildcard6(const struct in6_addr *address) {
    static const unsigned char mapped_any[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0};
    return IN6_IS_ADDR_UNSPECIFIED(address) || memcmp(address, mapped_any, sizeof mapped_any) == 0;
}

int bind(int fd, const struct sockaddr *address, socklen_t length) {
    if (real_bind == NULL) {
        errno = ENOSYS;
        return -1;
    }
    if (!confining || address == NULL) {
        return real_bind(fd, address, length);
    }
    if (address->sa_family == AF_INET && length >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in v4;
        memcpy(&v4, address, sizeof v4);
        if (v4.sin_addr.s_addr != htonl(INADDR_ANY)) {
            return real_bind(fd, address, length);
        }
        if (!confined_valid) {
            errno = EADDRNOTAVAIL;
            return -1;
        }
        v4.sin_addr = confined;
        return real_bind(fd, (const struct sockaddr *)&v4, sizeof v4);
    }
    if (address->sa_family == AF_INET6 && length >= (socklen_t)sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 v6;
        memcpy(&v6, address, sizeof v6);
        if (!is_wildcard6(&v6.sin6_addr)) {
            return real_bind(fd, address, length);
        }
        if (!confined_valid) {
            errno = EADDRNOTAVAIL;
            return -1;
        }
        memset(&v6.sin6_addr, 0, sizeof v6.sin6_addr);
        v6.sin6_addr.s6_addr[10] = 0xff;
        v6.sin6_addr.s6_addr[11] = 0xff;
        memcpy(&v6.sin6_addr.s6_addr[12], &confined, sizeof confined);
        /* An IPV6_V6ONLY socket cannot take a mapped address (Mooncake's is dual-stack already). */
        int v6_only = 0;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6_only, sizeof v6_only);
        return real_bind(fd, (const struct sockaddr *)&v6, sizeof v6);
    }
    return real_bind(fd, address, length);
}
