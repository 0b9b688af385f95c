/* fixedrate: an open-loop HTTP/1.1 load generator (a fixed request rate, latency measured from
 * when each request was due).
 *
 * wrk keeps every connection busy (closed loop): at saturation its latency is about
 * connections / throughput. This sends GET requests at a fixed total rate over N keep-alive
 * connections, each connection paced at rate / N (connection c sends its k-th request at
 * t0 + (k * N + c) / rate), and measures each request's latency from the moment it was DUE, not
 * from when it could be sent: a response that keeps its connection busy past the next due time
 * delays that request, and the delay counts (no coordinated omission). It also reports the
 * latency from the actual send, and how many requests went out more than 1 ms late.
 *
 * Built by the benchmark harness with the system C compiler (benchmarks/macro/load.py); Linux
 * only (epoll_pwait2 for sub-millisecond waits). Responses must carry a Content-Length (what the
 * proxy benchmarks return); anything else is an error.
 *
 *   fixedrate -c CONNECTIONS -r RATE -d SECONDS [-w WARMUP_SECONDS] [-H "Name: value"]...
 *             [-p PATHS_FILE] URL
 *
 * With -p, the requests cycle through the paths in PATHS_FILE (one a line, in order: the n-th
 * request sent goes to line n modulo their count) instead of the URL's own path: a spread of
 * product ids or a query mix, formatted once before the clock starts.
 *
 * prints one line: @@fixed {"requests":...,"p50_us":...,...}
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 65536
#define MAX_CONNS 4096

typedef struct {
    int fd;
    int busy;
    uint64_t k;        /* requests this connection has sent (its next one is number k) */
    int64_t due;       /* ns: when the request in flight was due */
    int64_t sent;      /* ns: when it was written */
    size_t have;       /* bytes buffered of the response */
    char buf[BUF];
} conn_t;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *msg) {
    fprintf(stderr, "fixedrate: %s%s%s\n", msg, errno ? ": " : "", errno ? strerror(errno) : "");
    exit(2);
}

static struct sockaddr_in addr;
static char **requests;   /* one formatted request per path */
static size_t *request_lens;
static size_t nrequests;
static int ep;

static int open_conn(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void watch(conn_t *c) {
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl");
}

static void reconnect(conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = open_conn();
    c->have = 0;
    c->busy = 0;
    watch(c);
}

/* A complete response in c->buf: its total length, 0 if incomplete, -1 if unusable. */
static long response_length(conn_t *c, int *status) {
    char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);
    if (end == NULL) return c->have >= BUF ? -1 : 0;
    if (c->have < 12 || memcmp(c->buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(c->buf + 9);
    long length = -1;
    for (char *line = memchr(c->buf, '\n', (size_t)(end - c->buf)); line && line < end;
         line = memchr(line + 1, '\n', (size_t)(end - line))) {
        if (strncasecmp(line + 1, "content-length:", 15) == 0) length = atol(line + 16);
    }
    if (length < 0) return -1;
    long total = (long)(end - c->buf) + 4 + length;
    if (total > BUF) return -1;
    return (long)c->have >= total ? total : 0;
}

/* Format "GET path" for every path (the URL's own, or each line of paths_file). */
static void format_requests(const char *paths_file, const char *path, const char *host, int port,
                            const char *headers) {
    size_t cap = 1;
    char line[4096];
    FILE *f = NULL;
    if (paths_file) {
        f = fopen(paths_file, "r");
        if (!f) die("cannot open the paths file");
        cap = 1024;
    }
    requests = malloc(cap * sizeof(char *));
    request_lens = malloc(cap * sizeof(size_t));
    if (!requests || !request_lens) die("out of memory");
    for (;;) {
        const char *p = path;
        if (f) {
            if (!fgets(line, sizeof line, f)) break;
            line[strcspn(line, "\r\n")] = 0;
            if (line[0] != '/') continue; /* blank lines and anything not a path */
            p = line;
        }
        if (nrequests == cap) {
            cap *= 2;
            requests = realloc(requests, cap * sizeof(char *));
            request_lens = realloc(request_lens, cap * sizeof(size_t));
            if (!requests || !request_lens) die("out of memory");
        }
        int len = snprintf(NULL, 0, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n", p, host, port,
                           headers);
        requests[nrequests] = malloc((size_t)len + 1);
        if (!requests[nrequests]) die("out of memory");
        snprintf(requests[nrequests], (size_t)len + 1, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n", p,
                 host, port, headers);
        request_lens[nrequests++] = (size_t)len;
        if (!f) break;
    }
    if (f) fclose(f);
    if (nrequests == 0) die("no paths in the paths file");
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double pct(uint32_t *v, size_t n, double p) {
    if (n == 0) return 0;
    size_t i = (size_t)(p / 100.0 * (double)n);
    if (i >= n) i = n - 1;
    return v[i];
}

int main(int argc, char **argv) {
    int conns = 64, opt;
    double rate = 1000, duration = 10, warmup = 1;
    char headers[4096] = "";
    const char *paths_file = NULL;
    while ((opt = getopt(argc, argv, "c:r:d:w:H:p:")) != -1) {
        switch (opt) {
        case 'c': conns = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'p': paths_file = optarg; break;
        case 'H':
            if (strlen(headers) + strlen(optarg) + 3 >= sizeof headers) die("headers too long");
            strcat(headers, optarg);
            strcat(headers, "\r\n");
            break;
        default: die("usage: fixedrate -c N -r RATE -d SECONDS [-w SECONDS] [-H h]... [-p FILE] URL");
        }
    }
    if (optind >= argc || conns < 1 || conns > MAX_CONNS || rate <= 0 || duration <= 0)
        die("usage: fixedrate -c N -r RATE -d SECONDS [-w SECONDS] [-H h]... [-p FILE] URL");
    char host[256], path[2048] = "/";
    int port = 80;
    if (sscanf(argv[optind], "http://%255[^:/]:%d%2047s", host, &port, path) < 2) die("bad URL");
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) die("the host must be an IPv4 address");
    format_requests(paths_file, path, host, port, headers);

    /* The kernel may wake a sleeper up to 50 us late by default (timer slack): ask for 1 ns,
       so requests leave when they are due. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    ep = epoll_create1(0);
    conn_t *cs = calloc((size_t)conns, sizeof(conn_t));
    if (!cs) die("out of memory");
    for (int i = 0; i < conns; i++) {
        cs[i].fd = open_conn();
        watch(&cs[i]);
    }
    double interval = 1e9 / rate; /* ns between two requests (all connections together) */
    size_t cap = (size_t)(rate * duration * 1.1) + 1024;
    uint32_t *lat = malloc(cap * sizeof(uint32_t)), *lat_sent = malloc(cap * sizeof(uint32_t));
    if (!lat || !lat_sent) die("out of memory");
    size_t n = 0, errors = 0, late = 0, status_errors = 0, sent_total = 0;
    double sum_us = 0;

    int64_t t0 = now_ns() + 10000000LL; /* 10 ms to settle */
    int64_t m_start = t0 + (int64_t)(warmup * 1e9), m_end = m_start + (int64_t)(duration * 1e9);
    int64_t stop = m_end + 2000000000LL; /* responses still in flight get 2 s */
    struct epoll_event events[256];

    for (;;) {
        int64_t now = now_ns();
        int64_t next = INT64_MAX;
        int pending = 0;
        for (int i = 0; i < conns; i++) {
            conn_t *c = &cs[i];
            if (c->busy) { pending++; continue; }
            int64_t due = t0 + (int64_t)(((double)c->k * conns + i) * interval);
            if (due >= m_end) continue; /* this connection is done */
            if (due <= now) {
                size_t r = sent_total % nrequests;
                ssize_t w = write(c->fd, requests[r], request_lens[r]);
                if (w != (ssize_t)request_lens[r]) { errors++; reconnect(c); continue; }
                c->busy = 1;
                c->due = due;
                c->sent = now;
                c->k++;
                sent_total++;
                if (due >= m_start && now - due > 1000000) late++;
                pending++;
            } else if (due < next) {
                next = due;
            }
        }
        if (next == INT64_MAX && pending == 0) break;
        if (now > stop) break;
        struct timespec ts = {0, 0};
        if (next != INT64_MAX) {
            int64_t wait = next - now_ns();
            if (wait > 0) { ts.tv_sec = wait / 1000000000LL; ts.tv_nsec = wait % 1000000000LL; }
        } else {
            ts.tv_nsec = 10000000; /* waiting for the last responses */
        }
        int got = epoll_pwait2(ep, events, 256, &ts, NULL);
        if (got < 0 && errno != EINTR) die("epoll_pwait2");
        for (int e = 0; e < got; e++) {
            conn_t *c = events[e].data.ptr;
            ssize_t r = read(c->fd, c->buf + c->have, BUF - c->have);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                if (c->busy) errors++;
                reconnect(c);
                continue;
            }
            c->have += (size_t)r;
            int status = 0;
            long total = response_length(c, &status);
            if (total == 0) continue;
            if (total < 0 || (size_t)total != c->have || !c->busy) {
                errors++;
                reconnect(c);
                continue;
            }
            int64_t done = now_ns();
            c->have = 0;
            c->busy = 0;
            if (c->due >= m_start && c->due < m_end) {
                if (status < 200 || status >= 400) status_errors++;
                if (n < cap) {
                    lat[n] = (uint32_t)((done - c->due) / 1000);
                    lat_sent[n] = (uint32_t)((done - c->sent) / 1000);
                    sum_us += (double)(done - c->due) / 1000.0;
                    n++;
                }
            }
        }
    }
    size_t unanswered = 0;
    for (int i = 0; i < conns; i++) unanswered += cs[i].busy ? 1 : 0;
    qsort(lat, n, sizeof(uint32_t), cmp_u32);
    qsort(lat_sent, n, sizeof(uint32_t), cmp_u32);
    printf("@@fixed {\"rate\":%.1f,\"connections\":%d,\"duration_s\":%.3f,\"requests\":%zu,"
           "\"achieved_rps\":%.1f,\"errors\":%zu,\"status_errors\":%zu,\"unanswered\":%zu,"
           "\"late\":%zu,\"p50_us\":%.0f,\"p90_us\":%.0f,\"p99_us\":%.0f,\"p999_us\":%.0f,"
           "\"max_us\":%.0f,\"mean_us\":%.1f,\"sent_p50_us\":%.0f,\"sent_p99_us\":%.0f}\n",
           rate, conns, duration, n, (double)n / duration, errors, status_errors, unanswered, late,
           pct(lat, n, 50), pct(lat, n, 90), pct(lat, n, 99), pct(lat, n, 99.9),
           n ? (double)lat[n - 1] : 0.0, n ? sum_us / (double)n : 0.0, pct(lat_sent, n, 50),
           pct(lat_sent, n, 99));
    return 0;
}
