/*
 * pfh_pack.c - state records exported again from stored values.
 *
 * pfhistory rebuilds a past state table as the records pf_state_export()
 * wrote. The database hands over about 30 values a state; turning 100,000
 * rows of them into records in Python took a third of the time, so Python
 * packs each row once as it comes (native 64-bit slots) and this writes
 * the records: big-endian fields, addresses from their ids, clamped times.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pfsync_state.h"
#include "pfh_bytes.h"
#include "pfh.h"

/* Bytes of the record and 64-bit slots of the row a format letter takes. */
static int
field_size(char f, size_t *slots)
{
	switch (f) {
	case 'q':
		*slots = 1;
		return 8;
	case 'I':
	case 'U':
		*slots = 1;
		return 4;
	case 'A':
		*slots = 1;
		return 16;
	case 's':
		*slots = 2;
		return 16;
	default:
		return -1;
	}
}

static inline void
put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static inline void
put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t)(v >> 32));
	put_be32(p + 4, (uint32_t)v);
}

/* The index of key in keys[0..n), sorted ascending, or n. */
static size_t
find_key(const int64_t *keys, size_t n, int64_t key)
{
	size_t lo = 0, hi = n, mid;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		if (keys[mid] < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && keys[lo] == key ? lo : n;
}

size_t
pfh_pack(const int64_t *rows, size_t count, const char *format,
    const int64_t *keys, const uint8_t *forms, size_t nkeys, uint8_t *out)
{
	size_t i, k, slots, width = 0, total = 0;
	const char *f;
	int size;

	for (f = format; *f != '\0'; f++) {
		if ((size = field_size(*f, &slots)) < 0)
			return (size_t)-1;
		total += (size_t)size;
		width += slots;
	}
	if (total != PFH_RECORD_SIZE)
		return (size_t)-1;
	for (i = 0; i < count; i++) {
		const int64_t *v = rows + i * width;
		uint8_t *p = out + i * PFH_RECORD_SIZE;

		for (f = format; *f != '\0'; f++) {
			switch (*f) {
			case 'q':
				put_be64(p, (uint64_t)*v++);
				p += 8;
				break;
			case 'I':
				put_be32(p, (uint32_t)*v++);
				p += 4;
				break;
			case 'U':
				put_be32(p, *v < 0 ? 0 : *v > (int64_t)UINT32_MAX ?
				    UINT32_MAX : (uint32_t)*v);
				v++;
				p += 4;
				break;
			case 'A':
				if ((k = find_key(keys, nkeys, *v++)) == nkeys)
					return i;
				memcpy(p, forms + k * 16, 16);
				p += 16;
				break;
			case 's':
				memcpy(p, v, 16);
				v += 2;
				p += 16;
				break;
			}
		}
	}
	return count;
}

static int
by_value(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

size_t
pfh_pack_keys(const int64_t *rows, size_t count, const char *format,
    int64_t *keys)
{
	size_t i, h, slots = 0, width = 0, n = 0, distinct = 0, size = 16;
	const char *f;
	int64_t *seen;
	uint8_t *used;
	int bits = 4;

	for (f = format; *f != '\0'; f++) {
		if (field_size(*f, &slots) < 0)
			return (size_t)-1;
		width += slots;
	}
	for (i = 0; i < count; i++) {
		const int64_t *v = rows + i * width;

		for (f = format; *f != '\0'; f++) {
			if (*f == 'A')
				keys[n++] = *v;
			(void)field_size(*f, &slots);
			v += slots;
		}
	}
	/*
	 * A few thousand addresses recur among 100,000 states: drop repeats
	 * through an open-addressing table, then sort the few that are left.
	 */
	while (size < 2 * n) {
		size *= 2;
		bits++;
	}
	seen = malloc(size * sizeof(*seen));
	used = calloc(size, 1);
	if (seen == NULL || used == NULL) {
		free(seen);
		free(used);
		return (size_t)-2;
	}
	for (i = 0; i < n; i++) {
		h = (size_t)(((uint64_t)keys[i] * 0x9E3779B97F4A7C15ULL) >>
		    (64 - bits));
		while (used[h] && seen[h] != keys[i])
			h = (h + 1) & (size - 1);
		if (!used[h]) {
			used[h] = 1;
			seen[h] = keys[i];
			keys[distinct++] = keys[i];
		}
	}
	free(seen);
	free(used);
	qsort(keys, distinct, sizeof(*keys), by_value);
	return distinct;
}

struct id_order {
	uint64_t id;
	uint32_t creatorid;
	uint32_t index;
};

static int
by_id(const void *a, const void *b)
{
	const struct id_order *x = a, *y = b;

	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	if (x->creatorid != y->creatorid)
		return x->creatorid < y->creatorid ? -1 : 1;
	/* Equal keys keep their order, as a stable sort would. */
	return x->index < y->index ? -1 : x->index > y->index;
}

int
pfh_sort_by_id(const uint8_t *records, size_t count, uint8_t *out)
{
	struct id_order *order;
	size_t i;

	if (count > UINT32_MAX)
		return -1;
	order = malloc((count ? count : 1) * sizeof(*order));
	if (order == NULL)
		return -1;
	for (i = 0; i < count; i++) {
		const uint8_t *r = records + i * PFH_RECORD_SIZE;

		order[i].id = be64(r + offsetof(struct pfh_pfsync_state, id));
		order[i].creatorid =
		    be32(r + offsetof(struct pfh_pfsync_state, creatorid));
		order[i].index = (uint32_t)i;
	}
	qsort(order, count, sizeof(*order), by_id);
	for (i = 0; i < count; i++)
		memcpy(out + i * PFH_RECORD_SIZE,
		    records + (size_t)order[i].index * PFH_RECORD_SIZE,
		    PFH_RECORD_SIZE);
	free(order);
	return 0;
}
