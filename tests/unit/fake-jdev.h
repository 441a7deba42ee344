/* subpage unit tests: an in-memory journal device (struct jdev) with a
 * volatile write cache, for crash testing.
 *
 * The fake keeps two things: the DURABLE image (what survives a power
 * cut) and the PENDING writes, in the order they were made, not yet
 * covered by a sync.
 *
 *  - pread returns the latest contents: durable with every pending
 *    write applied in order;
 *  - pwrite appends to the pending writes (a copy of the data);
 *  - sync makes durable the writes that were pending when it was
 *    called (fdatasync's promise); writes made while it is held at its
 *    gate stay pending;
 *  - fake_jdev_crash builds an image of a possible state after a power
 *    cut now: the durable image, then each pending write in order,
 *    independently (a PRNG seeded with SEED) kept whole, dropped, or
 *    torn: only some of the 512-byte device sectors it touches kept, in
 *    any pattern.  A kept part of a sector the write covers partly is
 *    what a read-modify-write of that sector would leave.
 *
 * Faults: fake_jdev_fail_next (f, op, err, skip) makes the (skip+1)th
 * next call of OP fail once with -ERR (ERR is a positive errno).  A
 * failed pwrite writes nothing; after a failed sync the pending writes
 * stay pending.
 *
 * Hold gates, as in fake-backend.h: fake_jdev_hold (f, op, true) closes
 * the gate of OP, and later calls block there until fake_jdev_release
 * lets N of them pass (tokens carry over) or fake_jdev_hold (f, op,
 * false) opens it; fake_jdev_held says how many calls are blocked at it
 * now.  A held call takes effect only once released.
 *
 * Accesses outside the device fail with -EIO and are counted in
 * counts.bad (tests assert it is 0).  Everything is under one mutex:
 * the fake may be used from any number of threads.  It never calls
 * cmocka.
 */
#ifndef SUBPAGE_FAKE_JDEV_H
#define SUBPAGE_FAKE_JDEV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jformat.h"

enum fake_jdev_op {
  FAKE_JDEV_PREAD,
  FAKE_JDEV_PWRITE,
  FAKE_JDEV_SYNC,
  FAKE_JDEV_NR_OPS
};

struct fake_jdev_counts {
  uint64_t preads, pwrites, syncs;    /* successful calls */
  uint64_t willneeds, willneed_bytes; /* hints (they change nothing) */
  uint64_t errors;                    /* calls failed by fake_jdev_fail_next */
  uint64_t bad;                       /* out-of-range accesses */
  size_t pending;                     /* writes not yet durable */
};

struct fake_jdev;

/* A zeroed device of SIZE bytes, or one whose durable image is a copy of
 * IMG.  Both abort on allocation failure.
 */
struct fake_jdev *fake_jdev_new (uint64_t size);
struct fake_jdev *fake_jdev_from_image (const uint8_t *img, uint64_t size);
void fake_jdev_free (struct fake_jdev *f);
/* The struct jdev to hand to the code under test (valid until free). */
const struct jdev *fake_jdev_dev (struct fake_jdev *f);

/* A malloc'd image (dev size bytes) of a possible state after a power
 * cut now; SEED 0: exactly the durable image.
 */
uint8_t *fake_jdev_crash (struct fake_jdev *f, uint64_t seed);
/* A new device whose durable image is fake_jdev_crash (F, SEED), built
 * at the cost of the bytes F was ever written up to, not of its size
 * (the schedule explorer recovers thousands of them a second).
 */
struct fake_jdev *fake_jdev_crash_dev (struct fake_jdev *f, uint64_t seed);
/* The same into DST, an existing device of F's size (reset first). */
void fake_jdev_crash_to (struct fake_jdev *f, uint64_t seed,
                         struct fake_jdev *dst);
/* Back to zeroes, nothing pending, no fault, gate or count (the hook
 * stays), at the cost of the bytes written since it was last zero.
 */
void fake_jdev_reset (struct fake_jdev *f);
/* A malloc'd copy of the latest contents (what pread returns). */
uint8_t *fake_jdev_contents (struct fake_jdev *f);
/* Frees an image of fake_jdev_crash or fake_jdev_contents (with the C
 * library's free: a test file's free is cmocka's).
 */
void fake_jdev_free_image (uint8_t *img);

void fake_jdev_get_counts (struct fake_jdev *f, struct fake_jdev_counts *out);

/* Faults: see above.  A later call replaces an armed fault of OP. */
void fake_jdev_fail_next (struct fake_jdev *f, enum fake_jdev_op op, int err,
                          unsigned skip);

/* Linux's fdatasync after a writeback error: with DROPS set, a failed
 * sync drops the pending writes it covers instead of keeping them (the
 * kernel marks the pages it could not write clean and reports the error
 * once; the next sync succeeds without them).  Reads still see them.
 */
void fake_jdev_set_sync_drops (struct fake_jdev *f, bool drops);

/* A hook called with no lock held at each pwrite's and sync's start
 * ("jdev.pwrite", "jdev.sync") and end ("jdev.pwrite.done",
 * "jdev.sync.done"), for the schedule explorer (tests/explore), which
 * switches threads there; NULL removes it.  Set it only while no call
 * runs.
 */
typedef void (*fake_jdev_hook_fn) (void *opaque, const char *where);
void fake_jdev_set_hook (struct fake_jdev *f, fake_jdev_hook_fn fn,
                         void *opaque);

/* Hold gates: see above. */
void fake_jdev_hold (struct fake_jdev *f, enum fake_jdev_op op, bool on);
void fake_jdev_release (struct fake_jdev *f, enum fake_jdev_op op, unsigned n);
unsigned fake_jdev_held (struct fake_jdev *f, enum fake_jdev_op op);

#endif /* SUBPAGE_FAKE_JDEV_H */
