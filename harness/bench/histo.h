/*
 * histo: a latency histogram with log-linear buckets (the HdrHistogram layout), microseconds.
 *
 * Values 0..127 us have one bucket each; above that every power of two is split into 64
 * equal buckets, so a recorded value is known to within 1/64 (1.6 %) of itself. The range ends
 * at HX_HISTO_MAX_US (~68.7 s); larger values land in the last bucket and still count, and the
 * exact maximum is kept separately. Recording is O(1) with no allocation; one histogram per
 * thread, merged at the end (no locking inside).
 */
#ifndef CMKH_HISTO_H
#define CMKH_HISTO_H

#include <stdint.h>

#define HX_HISTO_SUB_BITS 6                       /* 64 buckets per power of two */
#define HX_HISTO_MAX_SHIFT 29                     /* octaves 2^7..2^35 us */
#define HX_HISTO_MAX_US ((UINT64_C(1) << 36) - 1) /* ~68.7 s */
#define HX_HISTO_BUCKETS (128 + HX_HISTO_MAX_SHIFT * 64)

typedef struct {
    uint64_t counts[HX_HISTO_BUCKETS];
    uint64_t total;
    uint64_t min_us, max_us; /* exact; min_us is UINT64_MAX while empty */
    uint64_t sum_us;
} hx_histo;

/* Empties h (caller-owned storage, nothing to clean up). */
void hx_histo_init(hx_histo *h);
void hx_histo_record(hx_histo *h, uint64_t us);
/* Adds every count of src to dst. */
void hx_histo_merge(hx_histo *dst, const hx_histo *src);
/* The value at quantile q (0..1): the upper edge of the bucket holding the q-th value,
 * clamped to the exact maximum, so p100 == max. 0 when empty. */
uint64_t hx_histo_quantile(const hx_histo *h, double q);
double hx_histo_mean(const hx_histo *h);

/* Bucket index of a value and the value range of a bucket (for tests). */
unsigned hx_histo_index(uint64_t us);
void hx_histo_range(unsigned index, uint64_t *lo, uint64_t *hi);

#endif
