/* subpage unit tests: an in-memory journal device for crash testing.
 *
 * Design: one struct fake_jdev holds two images of the device, CUR
 * (the latest contents, what pread returns) and DURABLE, and the
 * pending writes in order, each a copy of its data with an id that only
 * grows.  pwrite applies the data to CUR and appends it to the pending
 * list; sync notes the next id when it is called and, once past its
 * gate, applies to DURABLE and drops every pending write with a smaller
 * id (always a prefix of the list, as ids grow along it).  Keeping CUR
 * as a second image costs memory but keeps pread a memcpy; the devices
 * of the unit tests are small.
 *
 * fake_jdev_crash copies DURABLE and replays the pending list over it,
 * choosing for each write with a splitmix64 PRNG: whole, none, or a
 * random subset of the 512-byte device sectors it touches.
 *
 * One mutex (f->lock) covers everything, one condition variable
 * (f->cond) the hold gates, as in fake-backend.c.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fake-jdev.h"

#define SECTOR 512u

struct pending {
  uint64_t id;
  uint64_t off;
  size_t len;
  uint8_t *data;
};

struct fake_jdev {
  struct jdev dev; /* opaque: this struct */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  uint64_t size;
  uint8_t *cur, *durable;
  uint64_t hw; /* bytes past this were never written: zero in both */

  struct pending *pend;
  size_t npend, pend_cap;
  uint64_t next_id;

  struct fake_jdev_counts counts;

  /* Faults: fail the call when the countdown reaches 0. */
  bool fail_armed[FAKE_JDEV_NR_OPS];
  unsigned fail_skip[FAKE_JDEV_NR_OPS];
  int fail_err[FAKE_JDEV_NR_OPS];

  /* Gates. */
  bool hold[FAKE_JDEV_NR_OPS];
  unsigned tokens[FAKE_JDEV_NR_OPS];
  unsigned held[FAKE_JDEV_NR_OPS];

  bool sync_drops;        /* a failed sync drops what it covers */
  fake_jdev_hook_fn hook; /* called with no lock held */
  void *hook_opaque;
};

static void
lock (struct fake_jdev *f)
{
  if (pthread_mutex_lock (&f->lock) != 0)
    abort ();
}

static void
unlock (struct fake_jdev *f)
{
  if (pthread_mutex_unlock (&f->lock) != 0)
    abort ();
}

static void *
xmalloc (size_t n)
{
  void *p = malloc (n ? n : 1);

  if (!p)
    abort ();
  return p;
}

static int fj_pread (void *opaque, void *buf, size_t count, uint64_t off);
static int fj_pwrite (void *opaque, const void *buf, size_t count,
                      uint64_t off);
static int fj_sync (void *opaque);
static void fj_willneed (void *opaque, uint64_t off, uint64_t count);

static const struct jdev_ops fake_jdev_ops = {
  .pread = fj_pread,
  .pwrite = fj_pwrite,
  .sync = fj_sync,
  .willneed = fj_willneed,
};

struct fake_jdev *
fake_jdev_from_image (const uint8_t *img, uint64_t size)
{
  struct fake_jdev *f = calloc (1, sizeof *f);

  if (!f)
    abort ();
  f->size = size;
  /* calloc: a large one is fresh zero pages, not written here. */
  f->cur = calloc (1, size ? size : 1);
  f->durable = calloc (1, size ? size : 1);
  if (!f->cur || !f->durable)
    abort ();
  if (img) {
    memcpy (f->cur, img, size);
    memcpy (f->durable, img, size);
    f->hw = size;
  }
  f->dev = (struct jdev){ .ops = &fake_jdev_ops, .opaque = f, .size = size };
  pthread_mutex_init (&f->lock, NULL);
  pthread_cond_init (&f->cond, NULL);
  return f;
}

struct fake_jdev *
fake_jdev_new (uint64_t size)
{
  return fake_jdev_from_image (NULL, size);
}

void
fake_jdev_free (struct fake_jdev *f)
{
  if (!f)
    return;
  for (size_t i = 0; i < f->npend; i++)
    free (f->pend[i].data);
  free (f->pend);
  free (f->cur);
  free (f->durable);
  pthread_cond_destroy (&f->cond);
  pthread_mutex_destroy (&f->lock);
  free (f);
}

const struct jdev *
fake_jdev_dev (struct fake_jdev *f)
{
  return &f->dev;
}

/* splitmix64: a small PRNG whose every seed gives a good sequence. */
static uint64_t
prng_next (uint64_t *state)
{
  uint64_t z = (*state += UINT64_C (0x9E3779B97F4A7C15));

  z = (z ^ (z >> 30)) * UINT64_C (0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C (0x94D049BB133111EB);
  return z ^ (z >> 31);
}

/* With f->lock held: the crash image SEED over IMG, which holds zeroes
 * from f->hw on.
 */
static void
crash_into (struct fake_jdev *f, uint8_t *img, uint64_t seed)
{
  uint64_t state = seed;

  memcpy (img, f->durable, f->hw);
  for (size_t i = 0; seed != 0 && i < f->npend; i++) {
    const struct pending *p = &f->pend[i];
    uint64_t end = p->off + p->len;

    switch (prng_next (&state) % 3) {
    case 0: /* kept */ memcpy (img + p->off, p->data, p->len); break;
    case 1: /* dropped */ break;
    case 2: /* torn: each device sector it touches kept or not */
      for (uint64_t s = p->off - p->off % SECTOR; s < end; s += SECTOR) {
        uint64_t from = s > p->off ? s : p->off;
        uint64_t to = s + SECTOR < end ? s + SECTOR : end;
        if (prng_next (&state) & 1)
          memcpy (img + from, p->data + (from - p->off), to - from);
      }
      break;
    }
  }
}

uint8_t *
fake_jdev_crash (struct fake_jdev *f, uint64_t seed)
{
  uint8_t *img = xmalloc (f->size);

  lock (f);
  memset (img + f->hw, 0, f->size - f->hw);
  crash_into (f, img, seed);
  unlock (f);
  return img;
}

void
fake_jdev_reset (struct fake_jdev *f)
{
  lock (f);
  memset (f->cur, 0, f->hw);
  memset (f->durable, 0, f->hw);
  f->hw = 0;
  for (size_t i = 0; i < f->npend; i++)
    free (f->pend[i].data);
  f->npend = 0;
  memset (&f->counts, 0, sizeof f->counts);
  memset (f->fail_armed, 0, sizeof f->fail_armed);
  memset (f->hold, 0, sizeof f->hold);
  memset (f->tokens, 0, sizeof f->tokens);
  f->sync_drops = false;
  pthread_cond_broadcast (&f->cond);
  unlock (f);
}

void
fake_jdev_crash_to (struct fake_jdev *f, uint64_t seed, struct fake_jdev *dst)
{
  if (dst->size != f->size)
    abort ();
  fake_jdev_reset (dst);
  lock (f);
  crash_into (f, dst->durable, seed);
  dst->hw = f->hw;
  unlock (f);
  memcpy (dst->cur, dst->durable, dst->hw);
}

struct fake_jdev *
fake_jdev_crash_dev (struct fake_jdev *f, uint64_t seed)
{
  struct fake_jdev *n = fake_jdev_from_image (NULL, f->size);

  fake_jdev_crash_to (f, seed, n);
  return n;
}

uint8_t *
fake_jdev_contents (struct fake_jdev *f)
{
  uint8_t *img = xmalloc (f->size);

  lock (f);
  memcpy (img, f->cur, f->size);
  unlock (f);
  return img;
}

void
fake_jdev_get_counts (struct fake_jdev *f, struct fake_jdev_counts *out)
{
  lock (f);
  *out = f->counts;
  out->pending = f->npend;
  unlock (f);
}

void
fake_jdev_set_sync_drops (struct fake_jdev *f, bool drops)
{
  lock (f);
  f->sync_drops = drops;
  unlock (f);
}

void
fake_jdev_set_hook (struct fake_jdev *f, fake_jdev_hook_fn fn, void *opaque)
{
  f->hook = fn;
  f->hook_opaque = opaque;
}

static void
hook (struct fake_jdev *f, const char *where)
{
  if (f->hook)
    f->hook (f->hook_opaque, where);
}

void
fake_jdev_fail_next (struct fake_jdev *f, enum fake_jdev_op op, int err,
                     unsigned skip)
{
  if (err <= 0)
    abort (); /* a positive errno */
  lock (f);
  f->fail_armed[op] = true;
  f->fail_skip[op] = skip;
  f->fail_err[op] = err;
  unlock (f);
}

void
fake_jdev_hold (struct fake_jdev *f, enum fake_jdev_op op, bool on)
{
  lock (f);
  f->hold[op] = on;
  f->tokens[op] = 0;
  pthread_cond_broadcast (&f->cond);
  unlock (f);
}

void
fake_jdev_release (struct fake_jdev *f, enum fake_jdev_op op, unsigned n)
{
  lock (f);
  f->tokens[op] += n;
  pthread_cond_broadcast (&f->cond);
  unlock (f);
}

unsigned
fake_jdev_held (struct fake_jdev *f, enum fake_jdev_op op)
{
  unsigned n;

  lock (f);
  n = f->held[op];
  unlock (f);
  return n;
}

/* With f->lock held: waits at OP's gate, then says whether the call
 * fails (0 or -errno).
 */
static int
enter (struct fake_jdev *f, enum fake_jdev_op op)
{
  if (f->hold[op]) {
    f->held[op]++;
    while (f->hold[op] && f->tokens[op] == 0)
      pthread_cond_wait (&f->cond, &f->lock);
    if (f->hold[op])
      f->tokens[op]--;
    f->held[op]--;
  }
  if (f->fail_armed[op]) {
    if (f->fail_skip[op] > 0)
      f->fail_skip[op]--;
    else {
      f->fail_armed[op] = false;
      f->counts.errors++;
      return -f->fail_err[op];
    }
  }
  return 0;
}

static bool
in_range (struct fake_jdev *f, uint64_t off, size_t n)
{
  return off <= f->size && n <= f->size - off;
}

static void
fj_willneed (void *opaque, uint64_t off, uint64_t count)
{
  struct fake_jdev *f = opaque;

  lock (f);
  if (!in_range (f, off, count))
    f->counts.bad++;
  else {
    f->counts.willneeds++;
    f->counts.willneed_bytes += count;
  }
  unlock (f);
}

static int
fj_pread (void *opaque, void *buf, size_t count, uint64_t off)
{
  struct fake_jdev *f = opaque;
  int err;

  lock (f);
  err = enter (f, FAKE_JDEV_PREAD);
  if (err == 0 && !in_range (f, off, count)) {
    f->counts.bad++;
    err = -EIO;
  }
  if (err == 0) {
    memcpy (buf, f->cur + off, count);
    f->counts.preads++;
  }
  unlock (f);
  return err;
}

static int
fj_pwrite (void *opaque, const void *buf, size_t count, uint64_t off)
{
  struct fake_jdev *f = opaque;
  int err;

  hook (f, "jdev.pwrite");
  lock (f);
  err = enter (f, FAKE_JDEV_PWRITE);
  if (err == 0 && !in_range (f, off, count)) {
    f->counts.bad++;
    err = -EIO;
  }
  if (err == 0 && count > 0) {
    if (f->npend == f->pend_cap) {
      f->pend_cap = f->pend_cap ? 2 * f->pend_cap : 64;
      f->pend = realloc (f->pend, f->pend_cap * sizeof *f->pend);
      if (!f->pend)
        abort ();
    }
    f->pend[f->npend] = (struct pending){
      .id = f->next_id++,
      .off = off,
      .len = count,
      .data = xmalloc (count),
    };
    memcpy (f->pend[f->npend].data, buf, count);
    f->npend++;
    memcpy (f->cur + off, buf, count);
    if (off + count > f->hw)
      f->hw = off + count;
  }
  if (err == 0)
    f->counts.pwrites++;
  unlock (f);
  hook (f, "jdev.pwrite.done");
  return err;
}

static int
fj_sync (void *opaque)
{
  struct fake_jdev *f = opaque;
  uint64_t mark;
  size_t n = 0;
  int err;

  hook (f, "jdev.sync");
  lock (f);
  mark = f->next_id; /* what this sync covers: writes made before it */
  err = enter (f, FAKE_JDEV_SYNC);
  if (err == 0 || f->sync_drops) {
    while (n < f->npend && f->pend[n].id < mark) {
      struct pending *p = &f->pend[n++];
      if (err == 0)
        memcpy (f->durable + p->off, p->data, p->len);
      free (p->data);
    }
    memmove (f->pend, f->pend + n, (f->npend - n) * sizeof *f->pend);
    f->npend -= n;
    if (err == 0)
      f->counts.syncs++;
  }
  unlock (f);
  hook (f, "jdev.sync.done");
  return err;
}

void
fake_jdev_free_image (uint8_t *img)
{
  free (img);
}
