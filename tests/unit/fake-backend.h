/* subpage unit tests: a fake backend over an in-memory disk.
 *
 * The fake implements struct cache_backend_ops (fake_ops, opaque = the
 * struct fake *) over a calloc'd disk and lets a test watch and steer
 * every backend call:
 *
 *  - counters per operation (fake_get_counts);
 *  - an event log, one entry per call that reached the disk (or failed
 *    there), in the order the calls took effect, so a test can assert
 *    ORDER ("the backend flush came after the last write");
 *  - faults: fail the Nth call of an operation once, or fail every call
 *    while a persistent fault is set, with a chosen -errno;
 *  - hold gates: while a gate is closed, calls of that operation block
 *    (condition variable) until the test releases one or all of them;
 *    fake_held() says how many callers are blocked right now;
 *  - a capture submit hook for cache_set_submit: it records runs without
 *    doing I/O, and the test completes them later in any order with
 *    fake_complete().
 *
 * Everything is protected by one mutex, so the fake may be driven from
 * any number of threads.  A held call takes effect (and is logged) only
 * after it is released.  Accesses outside the disk are counted in
 * counts.bad and fail with -EIO: tests assert bad == 0 in teardown.
 *
 * The fake never calls cmocka: it is safe from any thread.
 */
#ifndef SUBPAGE_FAKE_BACKEND_H
#define SUBPAGE_FAKE_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"

enum fake_op {
  FAKE_READ,
  FAKE_WRITE,
  FAKE_FLUSH,
  FAKE_TRIM,
  FAKE_ZERO,
  FAKE_NR_OPS
};

struct fake_event {
  enum fake_op op;
  uint64_t off;
  uint32_t len;
  uint32_t flags;
  int err;         /* 0 or -errno returned by the call */
  uint64_t seq;    /* position in the log, from 0 */
};

struct fake_counts {
  uint64_t reads, read_bytes;
  uint64_t writes, write_bytes;   /* successful writes only */
  uint64_t flushes;               /* successful flushes only */
  uint64_t trims, zeroes;
  uint64_t fua_writes;            /* successful writes with CACHE_FUA */
  uint64_t write_errors, flush_errors, other_errors;
  uint64_t bad;                   /* out-of-range or zero-length calls */
};

struct fake;

extern const struct cache_backend_ops fake_ops;
/* Like fake_ops, without trim and zero (the cache then emulates them). */
extern const struct cache_backend_ops fake_ops_no_trim_zero;

struct fake *fake_new (uint64_t size);
void fake_free (struct fake *f);
uint64_t fake_size (struct fake *f);
/* Changes the disk's size as a truncate does: bytes past a smaller size
 * are gone (zeroes if it grows again), and from then on a read past the
 * end fails with -ERANGE, as the file backend's does.  fake_ops
 * (not fake_ops_no_trim_zero) reports the size through get_size.
 */
void fake_resize (struct fake *f, uint64_t size);

/* Direct disk access for the test: not counted, not logged, no faults. */
void fake_disk_read (struct fake *f, void *buf, size_t n, uint64_t off);
void fake_disk_write (struct fake *f, const void *buf, size_t n, uint64_t off);
bool fake_disk_equals (struct fake *f, const void *buf, size_t n, uint64_t off);
bool fake_disk_is_byte (struct fake *f, unsigned char byte, size_t n,
                        uint64_t off);

void fake_get_counts (struct fake *f, struct fake_counts *out);
/* Clears counters and the log (not faults, gates or captures). */
void fake_reset_counts (struct fake *f);

/* Event log. */
size_t fake_nr_events (struct fake *f);
bool fake_event (struct fake *f, size_t i, struct fake_event *out);
/* Index of the first / last successful event of OP overlapping
 * [off, off+len) (len 0: any range; flush matches any range); -1 if none.
 */
long fake_log_first (struct fake *f, enum fake_op op, uint64_t off,
                     uint32_t len);
long fake_log_last (struct fake *f, enum fake_op op, uint64_t off,
                    uint32_t len);
/* Prints the log to stderr (for diagnosing a failed test). */
void fake_log_dump (struct fake *f);

/* Faults.  fake_fail_nth: the Nth call of OP from now (1 = the next
 * one) fails once with ERR (a negative errno).  fake_fail_all: every
 * call of OP fails with ERR until called again with ERR = 0.
 */
void fake_fail_nth (struct fake *f, enum fake_op op, unsigned n, int err);
void fake_fail_all (struct fake *f, enum fake_op op, int err);

/* Hold gates.  fake_hold (f, op, true) closes the gate: later calls of
 * OP block until released.  fake_release gives N callers leave to pass
 * (tokens carry over to later callers if fewer are held).
 * fake_hold (f, op, false) opens the gate and releases everyone.
 */
void fake_hold (struct fake *f, enum fake_op op, bool on);
void fake_release (struct fake *f, enum fake_op op, unsigned n);
unsigned fake_held (struct fake *f, enum fake_op op);

/* Capture submit hook: install with
 *   cache_set_submit (c, fake_capture_submit, f);
 * Runs are recorded in submission order (index from 0) and stay
 * pending until fake_complete.
 */
void fake_capture_submit (void *opaque, struct cache *c,
                          struct cache_run *run);
struct fake_capture {
  uint64_t off;
  uint32_t len;
  uint32_t flags;
  bool done;
};
size_t fake_nr_captured (struct fake *f);      /* ever captured */
size_t fake_nr_pending (struct fake *f);       /* captured, not completed */
bool fake_capture_info (struct fake *f, size_t idx, struct fake_capture *out);
/* The run itself (valid only while pending). */
struct cache_run *fake_capture_run (struct fake *f, size_t idx);
/* Does a pending or completed capture overlap [off, off+len)? */
bool fake_capture_overlaps (struct fake *f, size_t from_idx,
                            uint64_t off, uint32_t len);
/* Completes capture IDX: if ERR == 0, performs the backend write of the
 * run's data through the normal fake path (counters, log, faults, hold
 * gate apply), then calls cache_run_done with ERR or the write's
 * result.  Returns the error passed to cache_run_done.  A capture can
 * be completed once; completing it twice aborts.
 */
int fake_complete (struct fake *f, struct cache *c, size_t idx, int err);
/* Completes every pending capture in index order (including any that
 * are captured while doing so).  Returns the number completed.
 */
size_t fake_complete_all (struct fake *f, struct cache *c, int err);

#endif /* SUBPAGE_FAKE_BACKEND_H */
