/* fixedrate: an open-loop HTTP/1.1 load generator (a fixed request rate, latency measured from
 * when each request was due).
 *
 * wrk keeps every connection busy (closed loop): at saturation its latency is about
 * connections / throughput. This sends requests at a fixed total rate over N keep-alive
 * connections, each connection paced at rate / N (connection c sends its k-th request at
 * t0 + (k * N + c) / rate), and measures each request's latency from the moment it was DUE, not
 * from when it could be sent: a response that keeps its connection busy past the next due time
 * delays that request, and the delay counts (no coordinated omission). It also reports the
 * latency from the actual send, and how many requests went out more than 1 ms late.
 *
 * Two kinds of load:
 *
 *   fixedrate -c CONNECTIONS -r RATE -d SECONDS [-w WARMUP_SECONDS] [-H "Name: value"]... URL
 *       the same GET of URL every time;
 *   fixedrate -c CONNECTIONS -r RATE -d SECONDS [-w WARMUP_SECONDS] -f FILE URL
 *       the requests of FILE, in file order, cycling: the request with global sequence number
 *       s = k * N + c (connection c's k-th) is FILE's request s mod count, so the order is the
 *       same run after run. URL gives only the address (http://IPv4:port).
 *
 * FILE (written by benchmarks/macro/mix.py) is a header line, then one record per request:
 *
 *   fixedrate-requests LABEL,LABEL,...\n
 *   INDEX LENGTH\n<LENGTH bytes: one complete HTTP/1.1 request>\n
 *   ...
 *
 * INDEX is the request's label (0 = the header's first name); LENGTH is decimal. The bytes are
 * sent as they are (the file's requests carry their own Host, Content-Length and headers).
 *
 * Output: one line `@@fixed {"requests":...,"p50_us":...,...}` (every request due in the
 * measured window); with -f also one `@@label {...}` line per label: responses, status classes
 * and the exact codes seen, latency from due time (p50/p90/p95/p99/p99.9/max), late sends, and
 * errors (a failed write, a connection closed or a response unreadable while the request was in
 * flight, no answer at the end). Per-label figures count only requests due in the measured
 * window (after the warm-up); the overall `errors` counts connection errors of the whole run.
 *
 * Responses must carry a Content-Length (every route cygate and the proxy benchmarks answer
 * does; cygate's JSON bodies are never chunked), except 1xx, 204 and 304, which have no body; a
 * chunked or otherwise unframed response is an error. Bodies are counted, not kept.
 *
 * Built by the benchmark harness with the system C compiler (benchmarks/macro/load.py); Linux
 * only (epoll_pwait2 for sub-millisecond waits).
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

#define HEAD_BUF 16384 /* a response's status line and headers must fit */
#define MAX_CONNS 4096
#define MAX_LABELS 64
#define MAX_STATUS 600

typedef struct {
    int fd;
    int busy;
    int label;         /* label of the request in flight */
    uint64_t k;        /* requests this connection has sent (its next one is number k) */
    int64_t due;       /* ns: when the request in flight was due */
    int64_t sent;      /* ns: when it was written */
    int status;        /* of the response being read, once its head is complete */
    long body_left;    /* body bytes still to come; -1 while the head is incomplete */
    size_t have;       /* bytes buffered of the response head */
    char buf[HEAD_BUF];
} conn_t;

typedef struct {   /* one label's figures (requests due in the measured window) */
    char name[64];
    size_t n, cap, errors, late, unanswered;
    uint32_t *lat;
    size_t status[MAX_STATUS];
    size_t other_status; /* outside 100..599 */
} label_t;

typedef struct {
    const char *data;
    size_t len;
    int label;
} req_t;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *msg) {
    fprintf(stderr, "fixedrate: %s%s%s\n", msg, errno ? ": " : "", errno ? strerror(errno) : "");
    exit(2);
}

static void die_file(const char *path, const char *msg) {
    fprintf(stderr, "fixedrate: %s: %s\n", path, msg);
    exit(2);
}

static struct sockaddr_in addr;
static int ep;
static req_t *reqs;
static size_t req_count;
static label_t labels[MAX_LABELS];
static int label_count;

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
    c->body_left = -1;
    c->busy = 0;
    watch(c);
}

/* Read the whole request file into memory: its labels and its requests (pointers into it). */
static void load_requests(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die_file(path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) die_file(path, "cannot seek");
    long size = ftell(f);
    rewind(f);
    if (size <= 0) die_file(path, "empty");
    char *data = malloc((size_t)size + 1);
    if (!data) die("out of memory");
    if (fread(data, 1, (size_t)size, f) != (size_t)size) die_file(path, "short read");
    fclose(f);
    data[size] = '\0';
    const char *magic = "fixedrate-requests ";
    char *eol = memchr(data, '\n', (size_t)size);
    if (!eol || strncmp(data, magic, strlen(magic)) != 0)
        die_file(path, "not a request file (first line: fixedrate-requests LABEL,...)");
    *eol = '\0';
    for (char *name = strtok(data + strlen(magic), ","); name; name = strtok(NULL, ",")) {
        if (label_count == MAX_LABELS) die_file(path, "more than 64 labels");
        if (strlen(name) == 0 || strlen(name) >= sizeof labels[0].name)
            die_file(path, "a label name is empty or too long");
        strcpy(labels[label_count++].name, name);
    }
    if (label_count == 0) die_file(path, "no labels");
    size_t cap = 1024;
    reqs = malloc(cap * sizeof(req_t));
    if (!reqs) die("out of memory");
    char *p = eol + 1, *end = data + size;
    while (p < end) {
        char *stop;
        long label = strtol(p, &stop, 10);
        if (stop == p || *stop != ' ' || label < 0 || label >= label_count)
            die_file(path, "a record does not start with a known label index");
        p = stop + 1;
        long len = strtol(p, &stop, 10);
        if (stop == p || *stop != '\n' || len <= 0 || len > end - stop - 1)
            die_file(path, "a record's length is missing or runs past the end");
        p = stop + 1;
        if (req_count == cap) {
            cap *= 2;
            reqs = realloc(reqs, cap * sizeof(req_t));
            if (!reqs) die("out of memory");
        }
        reqs[req_count++] = (req_t){.data = p, .len = (size_t)len, .label = (int)label};
        p += len;
        if (p >= end || *p != '\n') die_file(path, "a record does not end with a newline");
        p++;
    }
    if (req_count == 0) die_file(path, "no requests");
}

/* The head of a response is complete in c->buf (ending at head_end): its status and how many
 * body bytes follow the head; -1 if the response is not framed by a Content-Length. */
static long body_length(conn_t *c, const char *head_end, int *status) {
    if (c->have < 12 || memcmp(c->buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(c->buf + 9);
    long length = -1;
    for (char *line = memchr(c->buf, '\n', (size_t)(head_end - c->buf)); line && line < head_end;
         line = memchr(line + 1, '\n', (size_t)(head_end - line))) {
        if (strncasecmp(line + 1, "content-length:", 15) == 0) length = atol(line + 16);
        if (strncasecmp(line + 1, "transfer-encoding:", 18) == 0) return -1;
    }
    if (length < 0 && (*status < 200 || *status == 204 || *status == 304)) length = 0;
    return length;
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

static void label_latency(label_t *l, uint32_t us) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 1024;
        l->lat = realloc(l->lat, l->cap * sizeof(uint32_t));
        if (!l->lat) die("out of memory");
    }
    l->lat[l->n++] = us;
}

static void print_label(label_t *l) {
    size_t classes[6] = {0};
    qsort(l->lat, l->n, sizeof(uint32_t), cmp_u32);
    printf("@@label {\"label\":\"%s\",\"requests\":%zu,\"errors\":%zu,\"unanswered\":%zu,"
           "\"late\":%zu,\"p50_us\":%.0f,\"p90_us\":%.0f,\"p95_us\":%.0f,\"p99_us\":%.0f,"
           "\"p999_us\":%.0f,\"max_us\":%.0f,\"statuses\":{",
           l->name, l->n, l->errors, l->unanswered, l->late, pct(l->lat, l->n, 50),
           pct(l->lat, l->n, 90), pct(l->lat, l->n, 95), pct(l->lat, l->n, 99), pct(l->lat, l->n, 99.9),
           l->n ? (double)l->lat[l->n - 1] : 0.0);
    const char *sep = "";
    for (int s = 100; s < MAX_STATUS; s++) {
        if (!l->status[s]) continue;
        printf("%s\"%d\":%zu", sep, s, l->status[s]);
        classes[s / 100] += l->status[s];
        sep = ",";
    }
    if (l->other_status) printf("%s\"other\":%zu", sep, l->other_status);
    printf("},\"classes\":{\"1xx\":%zu,\"2xx\":%zu,\"3xx\":%zu,\"4xx\":%zu,\"5xx\":%zu}}\n",
           classes[1], classes[2], classes[3], classes[4], classes[5]);
}

#define USAGE "usage: fixedrate -c N -r RATE -d SECONDS [-w SECONDS] [-H h]... [-f FILE] URL"

int main(int argc, char **argv) {
    int conns = 64, opt;
    double rate = 1000, duration = 10, warmup = 1;
    char headers[4096] = "";
    const char *file = NULL;
    while ((opt = getopt(argc, argv, "c:r:d:w:H:f:")) != -1) {
        switch (opt) {
        case 'c': conns = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'f': file = optarg; break;
        case 'H':
            if (strlen(headers) + strlen(optarg) + 3 >= sizeof headers) die("headers too long");
            strcat(headers, optarg);
            strcat(headers, "\r\n");
            break;
        default: die(USAGE);
        }
    }
    if (optind >= argc || conns < 1 || conns > MAX_CONNS || rate <= 0 || duration <= 0 ||
        warmup < 0)
        die(USAGE);
    if (file && headers[0]) die("-H and -f: the file's requests carry their own headers");
    char host[256], path[2048] = "/";
    int port = 80;
    if (sscanf(argv[optind], "http://%255[^:/]:%d%2047s", host, &port, path) < 2) die("bad URL");
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) die("the host must be an IPv4 address");
    if (file) {
        load_requests(file);
    } else {
        static char request[8192];
        int len = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n",
                           path, host, port, headers);
        if (len < 0 || (size_t)len >= sizeof request) die("request too long");
        static req_t one;
        one = (req_t){.data = request, .len = (size_t)len, .label = 0};
        reqs = &one;
        req_count = 1;
    }

    /* The kernel may wake a sleeper up to 50 us late by default (timer slack): ask for 1 ns,
       so requests leave when they are due. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    ep = epoll_create1(0);
    conn_t *cs = calloc((size_t)conns, sizeof(conn_t));
    if (!cs) die("out of memory");
    for (int i = 0; i < conns; i++) {
        cs[i].fd = open_conn();
        cs[i].body_left = -1;
        watch(&cs[i]);
    }
    double interval = 1e9 / rate; /* ns between two requests (all connections together) */
    size_t cap = (size_t)(rate * duration * 1.1) + 1024;
    uint32_t *lat = malloc(cap * sizeof(uint32_t)), *lat_sent = malloc(cap * sizeof(uint32_t));
    if (!lat || !lat_sent) die("out of memory");
    size_t n = 0, errors = 0, late = 0, status_errors = 0;
    double sum_us = 0;
    static char sink[65536]; /* body bytes are read into it and dropped */

    int64_t t0 = now_ns() + 10000000LL; /* 10 ms to settle */
    int64_t m_start = t0 + (int64_t)(warmup * 1e9), m_end = m_start + (int64_t)(duration * 1e9);
    int64_t stop = m_end + 2000000000LL; /* responses still in flight get 2 s */
    struct epoll_event events[256];
#define MEASURED(due) ((due) >= m_start && (due) < m_end)
#define FAIL(c)                                                                   \
    do {                                                                          \
        errors++;                                                                 \
        if ((c)->busy && file && MEASURED((c)->due)) labels[(c)->label].errors++; \
        reconnect(c);                                                             \
    } while (0)

    for (;;) {
        int64_t now = now_ns();
        int64_t next = INT64_MAX;
        int pending = 0;
        for (int i = 0; i < conns; i++) {
            conn_t *c = &cs[i];
            if (c->busy) { pending++; continue; }
            uint64_t seq = c->k * (uint64_t)conns + (uint64_t)i;
            int64_t due = t0 + (int64_t)((double)seq * interval);
            if (due >= m_end) continue; /* this connection is done */
            if (due <= now) {
                const req_t *r = &reqs[seq % req_count];
                c->busy = 1;
                c->label = r->label;
                c->due = due;
                c->sent = now;
                c->k++;
                ssize_t w = write(c->fd, r->data, r->len);
                if (w != (ssize_t)r->len) { FAIL(c); continue; }
                if (MEASURED(due) && now - due > 1000000) {
                    late++;
                    if (file) labels[r->label].late++;
                }
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
            ssize_t r;
            if (c->body_left < 0) {
                r = read(c->fd, c->buf + c->have, HEAD_BUF - c->have);
            } else {
                size_t want = (size_t)c->body_left < sizeof sink ? (size_t)c->body_left : sizeof sink;
                r = read(c->fd, sink, want ? want : sizeof sink);
            }
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                if (c->busy) FAIL(c); else reconnect(c); /* an idle keep-alive closed: fine */
                continue;
            }
            if (!c->busy) { FAIL(c); continue; } /* bytes nobody asked for */
            if (c->body_left < 0) {
                c->have += (size_t)r;
                char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);
                if (end == NULL) {
                    if (c->have >= HEAD_BUF) FAIL(c);
                    continue;
                }
                long body = body_length(c, end, &c->status);
                size_t extra = c->have - (size_t)(end + 4 - c->buf); /* body bytes already here */
                if (body < 0 || (long)extra > body) { FAIL(c); continue; }
                c->body_left = body - (long)extra;
            } else {
                if ((long)r > c->body_left) { FAIL(c); continue; }
                c->body_left -= r;
            }
            if (c->body_left > 0) continue;
            int64_t done = now_ns();
            int status = c->status;
            c->have = 0;
            c->body_left = -1;
            c->busy = 0;
            if (MEASURED(c->due)) {
                if (status < 200 || status >= 400) status_errors++;
                uint32_t us = (uint32_t)((done - c->due) / 1000);
                if (n < cap) {
                    lat[n] = us;
                    lat_sent[n] = (uint32_t)((done - c->sent) / 1000);
                    sum_us += (double)(done - c->due) / 1000.0;
                    n++;
                }
                if (file) {
                    label_t *l = &labels[c->label];
                    label_latency(l, us);
                    if (status >= 100 && status < MAX_STATUS) l->status[status]++;
                    else l->other_status++;
                }
            }
        }
    }
    size_t unanswered = 0;
    for (int i = 0; i < conns; i++) {
        if (!cs[i].busy) continue;
        unanswered++;
        if (file && MEASURED(cs[i].due)) labels[cs[i].label].unanswered++;
    }
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
    if (file)
        for (int i = 0; i < label_count; i++) print_label(&labels[i]);
    return 0;
}
