/* histo.c: log-linear latency buckets (see histo.h). */
#include "histo.h"

#include <assert.h>
#include <string.h>

void hx_histo_init(hx_histo *h)
{
    memset(h, 0, sizeof(*h));
    h->min_us = UINT64_MAX;
}

static unsigned msb64(uint64_t v)
{
    return 63u - (unsigned)__builtin_clzll(v);
}

unsigned hx_histo_index(uint64_t us)
{
    unsigned shift;

    if (us < 128)
        return (unsigned)us;
    if (us > HX_HISTO_MAX_US)
        us = HX_HISTO_MAX_US;
    /* us in [2^m, 2^(m+1)), m >= 7: keep the top 7 bits, i.e. 64 steps within the octave */
    shift = msb64(us) - HX_HISTO_SUB_BITS; /* >= 1 */
    return 128 + (shift - 1) * 64 + (unsigned)((us >> shift) - 64);
}

void hx_histo_range(unsigned index, uint64_t *lo, uint64_t *hi)
{
    unsigned shift;
    uint64_t top;

    assert(index < HX_HISTO_BUCKETS);
    if (index < 128) {
        *lo = *hi = index;
        return;
    }
    shift = (index - 128) / 64 + 1;
    top = 64 + (index - 128) % 64;
    *lo = top << shift;
    *hi = ((top + 1) << shift) - 1;
}

void hx_histo_record(hx_histo *h, uint64_t us)
{
    h->counts[hx_histo_index(us)]++;
    h->total++;
    h->sum_us += us;
    if (us < h->min_us)
        h->min_us = us;
    if (us > h->max_us)
        h->max_us = us;
}

void hx_histo_merge(hx_histo *dst, const hx_histo *src)
{
    for (unsigned i = 0; i < HX_HISTO_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    dst->total += src->total;
    dst->sum_us += src->sum_us;
    if (src->min_us < dst->min_us)
        dst->min_us = src->min_us;
    if (src->max_us > dst->max_us)
        dst->max_us = src->max_us;
}

uint64_t hx_histo_quantile(const hx_histo *h, double q)
{
    uint64_t rank, seen = 0;

    if (h->total == 0)
        return 0;
    if (q <= 0)
        return h->min_us;
    if (q > 1)
        q = 1;
    /* the smallest value v such that at least q of all values are <= v */
    rank = (uint64_t)(q * (double)h->total + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > h->total)
        rank = h->total;
    for (unsigned i = 0; i < HX_HISTO_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t lo, hi;

            hx_histo_range(i, &lo, &hi);
            if (hi > h->max_us)
                hi = h->max_us;
            if (hi < h->min_us)
                hi = h->min_us;
            return hi;
        }
    }
    return h->max_us;
}

double hx_histo_mean(const hx_histo *h)
{
    return h->total ? (double)h->sum_us / (double)h->total : 0;
}
