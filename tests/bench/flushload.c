/* flushload: the flush-every-N write load of tests/bench/bench.py, in C.
 *
 * QD random writes of BS bytes over [0, SIZE); after every EVERY
 * acknowledged writes one flush is queued, and takes one of the QD
 * slots while it is in flight (like fio's fsync=N with an async engine,
 * but exactly one flush per EVERY writes: fio 3.33 sends more).  Prints
 * one JSON object (write IOPS, latency percentiles, flush count and
 * latency).  It replaces nbdload.py's former Python version, which
 * topped out near 57K writes/s against nbdkit's memory plugin on this
 * project's 2-core machine and took CPU the servers needed; this one
 * costs a few microseconds per request.
 *
 *   flushload --uri URI [--bs N] [--qd N] [--every N] [--size N]
 *             [--runtime S] [--seed N] [--conns N] [--bytes N]
 *             [--interval S]
 *
 * --every 0: no flushes (a pure write load).  --conns N: N connections
 * driven from the one thread, each with its own QD requests in flight
 * and its own flush every EVERY writes (for the slow backend's ceiling:
 * what the remote accepts from the cheapest client there is).
 * --bytes N: stop once N bytes of writes have been sent (or at
 * --runtime, whichever comes first): a burst of a fixed size.
 * --interval S: also report the writes acknowledged in each S seconds
 * of the timed window ("intervals": writes/s of each, the last one
 * partial), to see throughput over time.
 *
 * Not part of the test suite; built with the project (not installed).
 */

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libnbd.h>

/* One connection. */
struct conn {
  struct load *l;
  struct nbd_handle *h;
  unsigned inflight, acked, pending_flush;
};

struct load {
  unsigned qd, every;
  bool counting;
  uint64_t all_writes, all_flushes;    /* including the drain */
  uint64_t *wlat, nwlat, cwlat;        /* latencies (ns) of the writes */
  uint64_t *flat, nflat, cflat;        /* and flushes counted */
  uint64_t start;                      /* of the timed window */
  uint64_t interval_ns;                /* --interval, 0: none */
  uint64_t *ivl, nivl;                 /* writes acked per interval */
};

/* One in-flight request: its start time, for the completion callback. */
struct req {
  struct conn *cn;
  uint64_t t0;
  bool flush;
};

static uint64_t
now_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
}

static void
push (uint64_t **v, uint64_t *n, uint64_t *cap, uint64_t x)
{
  if (*n == *cap) {
    *cap = *cap ? *cap * 2 : 65536;
    *v = realloc (*v, *cap * sizeof **v);
    if (*v == NULL) {
      perror ("realloc");
      exit (EXIT_FAILURE);
    }
  }
  (*v)[(*n)++] = x;
}

static int
done (void *user_data, int *error)
{
  struct req *r = user_data;
  struct conn *cn = r->cn;
  struct load *l = cn->l;

  cn->inflight--;
  if (*error != 0) {
    fprintf (stderr, "flushload: %s failed: %s\n",
             r->flush ? "flush" : "write", strerror (*error));
    exit (EXIT_FAILURE);
  }
  if (r->flush) {
    if (l->counting)
      push (&l->flat, &l->nflat, &l->cflat, now_ns () - r->t0);
  }
  else {
    if (l->counting) {
      uint64_t t = now_ns ();

      push (&l->wlat, &l->nwlat, &l->cwlat, t - r->t0);
      if (l->interval_ns) {
        uint64_t k = (t - l->start) / l->interval_ns;

        if (k < l->nivl)
          l->ivl[k]++;
      }
    }
    l->all_writes++;
    if (l->every != 0 && ++cn->acked == l->every) {
      cn->acked = 0;
      cn->pending_flush++;
    }
  }
  return 1;
}

static void
free_req (void *user_data)
{
  free (user_data);
}

static int
cmp_u64 (const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

  return x < y ? -1 : x > y;
}

/* The same rank as nbdload.py's pct(). */
static uint64_t
pct (const uint64_t *v, uint64_t n, double p)
{
  uint64_t i;

  if (n == 0)
    return 0;
  i = (uint64_t) (p / 100.0 * (double) (n - 1) + 0.5);
  return v[i < n ? i : n - 1];
}

/* xorshift64*: the offsets need not match the Python client's. */
static uint64_t
rnd (uint64_t *s)
{
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * UINT64_C (2685821657736338717);
}

static void
die_nbd (const char *what)
{
  fprintf (stderr, "flushload: %s: %s\n", what, nbd_get_error ());
  exit (EXIT_FAILURE);
}

static void
usage (void)
{
  fprintf (stderr, "usage: flushload --uri URI [--bs N] [--qd N] "
           "[--every N] [--size N] [--runtime S] [--seed N] [--conns N] "
           "[--bytes N] [--interval S]\n");
  exit (EXIT_FAILURE);
}

int
main (int argc, char *argv[])
{
  const char *uri = NULL;
  uint64_t bs = 4096, size = UINT64_C (2) << 30, seed = 1;
  double runtime = 20, interval = 0;
  uint64_t budget = 0, sent = 0;
  struct load l = { .qd = 32, .every = 32, .counting = true };
  unsigned nconns = 1;
  struct conn *cns;
  struct pollfd *pfds;
  uint64_t nblocks, start, end, elapsed_ns = 0;
  char *buf;
  int i;

  for (i = 1; i < argc; i++) {
    const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

    if (v == NULL)
      usage ();
    i++;
    if (strcmp (k, "--uri") == 0) uri = v;
    else if (strcmp (k, "--bs") == 0) bs = strtoull (v, NULL, 0);
    else if (strcmp (k, "--qd") == 0) l.qd = (unsigned) strtoul (v, NULL, 0);
    else if (strcmp (k, "--every") == 0)
      l.every = (unsigned) strtoul (v, NULL, 0);
    else if (strcmp (k, "--size") == 0) size = strtoull (v, NULL, 0);
    else if (strcmp (k, "--runtime") == 0) runtime = strtod (v, NULL);
    else if (strcmp (k, "--seed") == 0) seed = strtoull (v, NULL, 0);
    else if (strcmp (k, "--conns") == 0)
      nconns = (unsigned) strtoul (v, NULL, 0);
    else if (strcmp (k, "--bytes") == 0) budget = strtoull (v, NULL, 0);
    else if (strcmp (k, "--interval") == 0) interval = strtod (v, NULL);
    else usage ();
  }
  if (uri == NULL || bs == 0 || size < bs || l.qd == 0 || nconns == 0 ||
      nconns > 1024 || runtime <= 0 || interval < 0)
    usage ();
  if (interval > 0) {
    l.interval_ns = (uint64_t) (interval * 1e9);
    l.nivl = (uint64_t) (runtime / interval) + 2;
    l.ivl = calloc (l.nivl, sizeof *l.ivl);
    if (l.ivl == NULL) {
      perror ("calloc");
      exit (EXIT_FAILURE);
    }
  }
  nblocks = size / bs;
  seed = seed * UINT64_C (0x9E3779B97F4A7C15) + 1;

  buf = malloc (bs);
  if (buf == NULL) {
    perror ("malloc");
    exit (EXIT_FAILURE);
  }
  for (uint64_t j = 0; j < bs; j++)
    buf[j] = (char) rnd (&seed);

  cns = calloc (nconns, sizeof *cns);
  pfds = calloc (nconns, sizeof *pfds);
  if (cns == NULL || pfds == NULL) {
    perror ("calloc");
    exit (EXIT_FAILURE);
  }
  for (unsigned k = 0; k < nconns; k++) {
    cns[k].l = &l;
    cns[k].h = nbd_create ();
    if (cns[k].h == NULL)
      die_nbd ("nbd_create");
    if (nbd_connect_uri (cns[k].h, uri) == -1)
      die_nbd ("connect");
  }

  start = l.start = now_ns ();
  end = start + (uint64_t) (runtime * 1e9);
  for (;;) {
    bool stop = now_ns () >= end || (budget != 0 && sent >= budget);
    unsigned busy = 0;

    for (unsigned k = 0; k < nconns; k++) {
      struct conn *cn = &cns[k];

      while (!stop && cn->inflight < l.qd) {
        struct req *r = malloc (sizeof *r);
        nbd_completion_callback cb = { .callback = done, .user_data = r,
                                       .free = free_req };
        int64_t c;

        if (r == NULL) {
          perror ("malloc");
          exit (EXIT_FAILURE);
        }
        r->cn = cn;
        r->t0 = now_ns ();
        r->flush = cn->pending_flush > 0;
        if (r->flush) {
          cn->pending_flush--;
          l.all_flushes++;
          c = nbd_aio_flush (cn->h, cb, 0);
        }
        else {
          c = nbd_aio_pwrite (cn->h, buf, bs, rnd (&seed) % nblocks * bs,
                              cb, 0);
          sent += bs;
          if (budget != 0 && sent >= budget)
            stop = true;
        }
        if (c == -1)
          die_nbd (r->flush ? "nbd_aio_flush" : "nbd_aio_pwrite");
        cn->inflight++;
      }
      busy += cn->inflight;
    }
    if (stop && elapsed_ns == 0) {
      elapsed_ns = now_ns () - start;
      l.counting = false;
    }
    if (busy == 0)
      break;
    /* Poll every handle's socket together, then let each one that is
     * ready move on: what nbd_poll does for one handle.
     */
    for (unsigned k = 0; k < nconns; k++) {
      unsigned dir = nbd_aio_get_direction (cns[k].h);

      pfds[k].fd = nbd_aio_get_fd (cns[k].h);
      pfds[k].events = ((dir & LIBNBD_AIO_DIRECTION_READ) ? POLLIN : 0) |
        ((dir & LIBNBD_AIO_DIRECTION_WRITE) ? POLLOUT : 0);
      pfds[k].revents = 0;
    }
    if (poll (pfds, nconns, -1) == -1) {
      perror ("poll");
      exit (EXIT_FAILURE);
    }
    for (unsigned k = 0; k < nconns; k++) {
      short ev = pfds[k].revents;

      if (ev & (POLLIN | POLLHUP | POLLERR)) {
        if (nbd_aio_notify_read (cns[k].h) == -1)
          die_nbd ("nbd_aio_notify_read");
      }
      else if (ev & POLLOUT) {
        if (nbd_aio_notify_write (cns[k].h) == -1)
          die_nbd ("nbd_aio_notify_write");
      }
    }
  }
  for (unsigned k = 0; k < nconns; k++) {
    if (nbd_shutdown (cns[k].h, 0) == -1)
      die_nbd ("nbd_shutdown");
    nbd_close (cns[k].h);
  }
  free (cns);
  free (pfds);

  qsort (l.wlat, l.nwlat, sizeof *l.wlat, cmp_u64);
  qsort (l.flat, l.nflat, sizeof *l.flat, cmp_u64);
  {
    double el = (double) elapsed_ns / 1e9;

    printf ("{\"mode\": \"flushload\", \"client\": \"flushload.c\", "
            "\"elapsed_s\": %.6f, \"writes\": %" PRIu64 ", "
            "\"flushes\": %" PRIu64 ", \"iops\": %.3f, "
            "\"write_bytes\": %" PRIu64 ", \"all_writes\": %" PRIu64 ", "
            "\"all_flushes\": %" PRIu64 ", \"flushes_per_write\": %.9f, "
            "\"wlat_p50_ns\": %" PRIu64 ", \"wlat_p99_ns\": %" PRIu64 ", "
            "\"flat_p50_ns\": %" PRIu64 ", \"flat_p99_ns\": %" PRIu64,
            el, l.nwlat, l.nflat, (double) l.nwlat / el,
            l.nwlat * bs, l.all_writes, l.all_flushes,
            (double) l.all_flushes / (double) (l.all_writes ? l.all_writes : 1),
            pct (l.wlat, l.nwlat, 50), pct (l.wlat, l.nwlat, 99),
            pct (l.flat, l.nflat, 50), pct (l.flat, l.nflat, 99));
    if (l.interval_ns) {
      uint64_t n = (elapsed_ns + l.interval_ns - 1) / l.interval_ns;

      printf (", \"interval_s\": %.3f, \"intervals\": [", interval);
      for (uint64_t k = 0; k < n && k < l.nivl; k++) {
        double span = interval;

        if ((k + 1) * l.interval_ns > elapsed_ns)
          span = (double) (elapsed_ns - k * l.interval_ns) / 1e9;
        printf ("%s%.1f", k ? ", " : "", (double) l.ivl[k] / span);
      }
      printf ("]");
    }
    printf ("}\n");
  }
  free (l.ivl);
  free (l.wlat);
  free (l.flat);
  free (buf);
  return EXIT_SUCCESS;
}
