/*
 * pfh.c - decode pfsync v6 state records, and read them live on OpenBSD.
 *
 * Byte order: every multi-byte field is decoded exactly as pf_state_export()
 * and pf_state_peer_hton() (sys/net/pf.c) write it, field by field, with
 * explicit big-endian loads so the result does not depend on the host.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef __OpenBSD__
#include <sys/types.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <net/if.h>
#include <netinet/in.h>
#include <net/pfvar.h>
#endif

#include "pfsync_state.h"
#include "pfh_bytes.h"
#include "pfh.h"

_Static_assert(PFH_RECORD_SIZE == sizeof(struct pfh_pfsync_state),
    "PFH_RECORD_SIZE matches the declared record");
_Static_assert(PFH_UNIQ_SIZE == 2 + sizeof(struct pfh_addr) &&
    sizeof(struct pfh_addr) == PFH_IFNAME_SIZE,
    "interned values are an address or a name");

#ifdef __OpenBSD__
/* On OpenBSD our declaration must match the kernel's, field by field. */
#define PFH_SAME(field) \
	_Static_assert(offsetof(struct pfsync_state, field) == \
	    offsetof(struct pfh_pfsync_state, field), \
	    "pfsync_state." #field " differs from <net/pfvar.h>")
_Static_assert(sizeof(struct pfsync_state) == sizeof(struct pfh_pfsync_state),
    "struct pfsync_state differs in size from <net/pfvar.h>");
PFH_SAME(id); PFH_SAME(ifname); PFH_SAME(key); PFH_SAME(src); PFH_SAME(dst);
PFH_SAME(rt_addr); PFH_SAME(rule); PFH_SAME(anchor); PFH_SAME(nat_rule);
PFH_SAME(creation); PFH_SAME(expire); PFH_SAME(packets); PFH_SAME(bytes);
PFH_SAME(creatorid); PFH_SAME(rtableid); PFH_SAME(max_mss); PFH_SAME(af);
PFH_SAME(proto); PFH_SAME(direction); PFH_SAME(log); PFH_SAME(rt);
PFH_SAME(timeout); PFH_SAME(sync_flags); PFH_SAME(updates);
PFH_SAME(min_ttl); PFH_SAME(set_tos); PFH_SAME(state_flags);
PFH_SAME(set_prio);
_Static_assert(sizeof(struct pfsync_state_key) ==
    sizeof(struct pfh_state_key), "pfsync_state_key differs");
_Static_assert(sizeof(struct pfsync_state_peer) ==
    sizeof(struct pfh_state_peer), "pfsync_state_peer differs");
_Static_assert(offsetof(struct pfsync_state_key, rdomain) ==
    offsetof(struct pfh_state_key, rdomain), "key rdomain differs");
_Static_assert(offsetof(struct pfsync_state_key, af) ==
    offsetof(struct pfh_state_key, af), "key af differs");
_Static_assert(offsetof(struct pfsync_state_peer, wscale) ==
    offsetof(struct pfh_state_peer, wscale), "peer wscale differs");
#endif

#define AT(rec, field) ((rec) + offsetof(struct pfh_pfsync_state, field))
#define PEER_AT(peer, field) ((peer) + offsetof(struct pfh_state_peer, field))
#define KEY_AT(key, field) ((key) + offsetof(struct pfh_state_key, field))

/* Write one peer's 11 columns, starting at column first. */
static void
decode_peer(const uint8_t *p, int64_t *num, size_t stride, size_t i, int first)
{
	const uint8_t *scrub = PEER_AT(p, scrub);

	/* pf_state_peer_hton(): htonl seq*, htons max_win/mss; u8 raw. */
	num[(first + 0) * stride + i] = be32(PEER_AT(p, seqlo));
	num[(first + 1) * stride + i] = be32(PEER_AT(p, seqhi));
	num[(first + 2) * stride + i] = be32(PEER_AT(p, seqdiff));
	num[(first + 3) * stride + i] = be16(PEER_AT(p, max_win));
	num[(first + 4) * stride + i] = be16(PEER_AT(p, mss));
	num[(first + 5) * stride + i] = p[offsetof(struct pfh_state_peer, state)];
	num[(first + 6) * stride + i] = p[offsetof(struct pfh_state_peer, wscale)];
	/* scrub: htons(pfss_flags), htonl(pfss_ts_mod); u8 raw. */
	num[(first + 7) * stride + i] = be16(scrub +
	    offsetof(struct pfh_state_scrub, pfss_flags));
	num[(first + 8) * stride + i] =
	    scrub[offsetof(struct pfh_state_scrub, pfss_ttl)];
	num[(first + 9) * stride + i] =
	    scrub[offsetof(struct pfh_state_scrub, scrub_flag)];
	num[(first + 10) * stride + i] = be32(scrub +
	    offsetof(struct pfh_state_scrub, pfss_ts_mod));
}

/* Write one key's port0, port1, rdomain and af columns. */
static void
decode_key(const uint8_t *k, int64_t *num, size_t stride, size_t i, int first)
{
	/* Ports are kept in network order by pf; rdomain is htons'd. */
	num[(first + 0) * stride + i] = be16(KEY_AT(k, port));
	num[(first + 1) * stride + i] = be16(KEY_AT(k, port) + 2);
	num[(first + 2) * stride + i] = be16(KEY_AT(k, rdomain));
	num[(first + 3) * stride + i] = k[offsetof(struct pfh_state_key, af)];
}

/* Open-addressing table of distinct 16-byte values, for interning. */
struct interner {
	uint32_t	*slots;		/* 0 = empty, else entry index + 1 */
	size_t		 mask;
	uint8_t		*uniq;
	size_t		 count;
};

static inline uint64_t
load64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static size_t
slot_of(const struct interner *t, const uint8_t *entry)
{
	uint64_t h = (load64(entry + 2) * 0x9e3779b97f4a7c15ULL) ^
	    (load64(entry + 10) * 0xc2b2ae3d27d4eb4fULL) ^
	    ((uint64_t)entry[0] << 8 | entry[1]);

	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ULL;
	h ^= h >> 32;
	return (size_t)h & t->mask;
}

/* Double the table once it is half full; -1 when memory runs out. */
static int
grow(struct interner *t)
{
	size_t size = (t->mask + 1) * 2, i, j;
	uint32_t *slots = calloc(size, sizeof(*slots));

	if (slots == NULL)
		return -1;
	free(t->slots);
	t->slots = slots;
	t->mask = size - 1;
	for (j = 0; j < t->count; j++) {
		for (i = slot_of(t, t->uniq + j * PFH_UNIQ_SIZE);
		    slots[i] != 0; i = (i + 1) & t->mask)
			;
		slots[i] = (uint32_t)(j + 1);
	}
	return 0;
}

/* Index of (kind, af, value) in t->uniq, added if new; -1 on ENOMEM. */
static int64_t
intern(struct interner *t, uint8_t kind, uint8_t af, const uint8_t *value)
{
	uint8_t key[PFH_UNIQ_SIZE];
	size_t i;

	key[0] = kind;
	key[1] = af;
	memcpy(key + 2, value, 16);
	for (i = slot_of(t, key);; i = (i + 1) & t->mask) {
		uint32_t slot = t->slots[i];
		uint8_t *e;

		if (slot == 0)
			break;
		e = t->uniq + (size_t)(slot - 1) * PFH_UNIQ_SIZE;
		if (memcmp(e, key, PFH_UNIQ_SIZE) == 0)
			return slot - 1;
	}
	memcpy(t->uniq + t->count * PFH_UNIQ_SIZE, key, PFH_UNIQ_SIZE);
	t->slots[i] = (uint32_t)++t->count;
	if (t->count * 2 > t->mask && grow(t) == -1)
		return -1;
	return (int64_t)(t->count - 1);
}

/* Mix one 64-bit word into h (a multiply-xorshift, as in splitmix64). */
static inline uint64_t
mix(uint64_t h, uint64_t v)
{
	h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
	h *= 0xbf58476d1ce4e5b9ULL;
	return h ^ (h >> 31);
}

/* PFH_NUM_DYN_HASH: the changing fields, read as big-endian words. */
static int64_t
dyn_hash(const uint8_t *r)
{
	uint64_t h = 0x243f6a8885a308d3ULL;
	size_t off;

	for (off = 0; off < 2 * sizeof(struct pfh_state_peer); off += 8)
		h = mix(h, be64(AT(r, src) + off));
	for (off = 0; off < 32; off += 8)	/* packets[2][2], bytes[2][2] */
		h = mix(h, be64(AT(r, packets) + off));
	h = mix(h, ((uint64_t)*AT(r, timeout) << 48) |
	    ((uint64_t)*AT(r, sync_flags) << 40) |
	    ((uint64_t)*AT(r, updates) << 32) | be16(AT(r, state_flags)));
	return (int64_t)h;
}

/* PFH_NUM_PEER_HASH: both peers, read as big-endian words. */
static int64_t
peer_hash(const uint8_t *r)
{
	uint64_t h = 0x13198a2e03707344ULL;
	size_t off;

	for (off = 0; off < 2 * sizeof(struct pfh_state_peer); off += 8)
		h = mix(h, be64(AT(r, src) + off));
	return (int64_t)h;
}

size_t
pfh_decode(const uint8_t *buf, size_t count, size_t stride, uint64_t *u64,
    int64_t *num, uint8_t *uniq)
{
	const size_t key_size = sizeof(struct pfh_state_key);
	struct interner t;
	size_t i, size = 1024;

	t.slots = calloc(size, sizeof(*t.slots));
	if (t.slots == NULL)
		return (size_t)-1;
	t.mask = size - 1;
	t.uniq = uniq;
	t.count = 0;

	for (i = 0; i < count; i++) {
		const uint8_t *r = buf + i * PFH_RECORD_SIZE;
		const uint8_t *wire = AT(r, key);
		const uint8_t *stack = wire + key_size;
		uint8_t waf = wire[offsetof(struct pfh_state_key, af)];
		uint8_t saf = stack[offsetof(struct pfh_state_key, af)];
		/* id: htobe64 in pf_state_insert(); pfctl prints betoh64. */
		u64[PFH_U64_ID * stride + i] = be64(AT(r, id));
		/* pf_state_counter_hton(): htonl(high), htonl(low). */
		u64[PFH_U64_PACKETS0 * stride + i] = be64(AT(r, packets));
		u64[PFH_U64_PACKETS1 * stride + i] = be64(AT(r, packets) + 8);
		u64[PFH_U64_BYTES0 * stride + i] = be64(AT(r, bytes));
		u64[PFH_U64_BYTES1 * stride + i] = be64(AT(r, bytes) + 8);

		num[PFH_NUM_CREATORID * stride + i] = be32(AT(r, creatorid));
		num[PFH_NUM_RULE * stride + i] = be32(AT(r, rule));
		num[PFH_NUM_ANCHOR * stride + i] = be32(AT(r, anchor));
		num[PFH_NUM_NAT_RULE * stride + i] = be32(AT(r, nat_rule));
		num[PFH_NUM_CREATION * stride + i] = be32(AT(r, creation));
		num[PFH_NUM_EXPIRE * stride + i] = be32(AT(r, expire));
		num[PFH_NUM_RTABLEID0 * stride + i] = (int32_t)be32(AT(r, rtableid));
		num[PFH_NUM_RTABLEID1 * stride + i] =
		    (int32_t)be32(AT(r, rtableid) + 4);
		num[PFH_NUM_MAX_MSS * stride + i] = be16(AT(r, max_mss));
		num[PFH_NUM_AF * stride + i] = *AT(r, af);
		num[PFH_NUM_PROTO * stride + i] = *AT(r, proto);
		num[PFH_NUM_DIRECTION * stride + i] = *AT(r, direction);
		num[PFH_NUM_LOG * stride + i] = *AT(r, log);
		num[PFH_NUM_RT * stride + i] = *AT(r, rt);
		num[PFH_NUM_TIMEOUT * stride + i] = *AT(r, timeout);
		num[PFH_NUM_SYNC_FLAGS * stride + i] = *AT(r, sync_flags);
		num[PFH_NUM_UPDATES * stride + i] = *AT(r, updates);
		num[PFH_NUM_MIN_TTL * stride + i] = *AT(r, min_ttl);
		num[PFH_NUM_SET_TOS * stride + i] = *AT(r, set_tos);
		num[PFH_NUM_STATE_FLAGS * stride + i] = be16(AT(r, state_flags));
		num[PFH_NUM_SET_PRIO0 * stride + i] = AT(r, set_prio)[0];
		num[PFH_NUM_SET_PRIO1 * stride + i] = AT(r, set_prio)[1];
		num[PFH_NUM_DYN_HASH * stride + i] = dyn_hash(r);
		num[PFH_NUM_PEER_HASH * stride + i] = peer_hash(r);

		decode_key(wire, num, stride, i, PFH_NUM_WIRE_PORT0);
		decode_key(stack, num, stride, i, PFH_NUM_STACK_PORT0);
		decode_peer(AT(r, src), num, stride, i, PFH_NUM_SRC_SEQLO);
		decode_peer(AT(r, dst), num, stride, i, PFH_NUM_DST_SEQLO);

		if ((num[PFH_NUM_IFNAME_REF * stride + i] =
		    intern(&t, PFH_UNIQ_IFNAME, 0, AT(r, ifname))) < 0 ||
		    (num[PFH_NUM_WIRE_ADDR0_REF * stride + i] =
		    intern(&t, PFH_UNIQ_ADDR, waf, KEY_AT(wire, addr))) < 0 ||
		    (num[PFH_NUM_WIRE_ADDR1_REF * stride + i] =
		    intern(&t, PFH_UNIQ_ADDR, waf, KEY_AT(wire, addr) + 16)) < 0 ||
		    (num[PFH_NUM_STACK_ADDR0_REF * stride + i] =
		    intern(&t, PFH_UNIQ_ADDR, saf, KEY_AT(stack, addr))) < 0 ||
		    (num[PFH_NUM_STACK_ADDR1_REF * stride + i] =
		    intern(&t, PFH_UNIQ_ADDR, saf, KEY_AT(stack, addr) + 16)) < 0 ||
		    (num[PFH_NUM_RT_ADDR_REF * stride + i] =
		    intern(&t, PFH_UNIQ_ADDR, *AT(r, af), AT(r, rt_addr))) < 0) {
			free(t.slots);
			return (size_t)-1;
		}
	}
	free(t.slots);
	return t.count;
}

void
pfh_free(void *p)
{
	free(p);
}

#ifdef __OpenBSD__
/* pfctl_show_states()'s loop (sbin/pfctl/pfctl.c): probe, then grow. */
int
pfh_fetch_states(int fd, uint8_t **buf_out, size_t *len_out, int *errno_out)
{
	struct pfioc_states ps;
	uint8_t *buf = NULL, *newbuf;
	size_t len = 0;

	*buf_out = NULL;
	*len_out = 0;
	*errno_out = 0;
	for (;;) {
		memset(&ps, 0, sizeof(ps));
		ps.ps_len = len;
		if (len > 0) {
			newbuf = realloc(buf, len);
			if (newbuf == NULL) {
				*errno_out = errno;
				free(buf);
				return PFH_ESYS;
			}
			buf = newbuf;
			ps.ps_buf = (caddr_t)buf;
		}
		if (ioctl(fd, DIOCGETSTATES, &ps) == -1) {
			*errno_out = errno;
			free(buf);
			return PFH_ESYS;
		}
		if (ps.ps_len + sizeof(struct pfioc_states) < len)
			break;
		if (len == 0 && ps.ps_len == 0)
			goto empty;
		if (len == 0)
			len = ps.ps_len;
		if (ps.ps_len == 0)
			goto empty;
		len *= 2;
	}
	*buf_out = buf;
	*len_out = ps.ps_len;
	return PFH_OK;
empty:
	free(buf);
	return PFH_OK;
}
#else
int
pfh_fetch_states(int fd, uint8_t **buf_out, size_t *len_out, int *errno_out)
{
	(void)fd;
	*buf_out = NULL;
	*len_out = 0;
	*errno_out = ENOSYS;
	return PFH_ENOTSUPPORTED;
}
#endif

size_t
pfh_column_stride(size_t count)
{
	/*
	 * Columns a whole number of pages apart map to the same cache sets, and
	 * writing 60 of them record by record thrashes L1 (4K aliasing): make
	 * consecutive columns start one cache line further into the page.
	 */
	return ((count + 511) & ~(size_t)511) + 8;
}

size_t
pfh_record_size(void)
{
	return sizeof(struct pfh_pfsync_state);
}

#define OFF(field) { #field, offsetof(struct pfh_pfsync_state, field) }
#define KOFF(field) { "key." #field, offsetof(struct pfh_state_key, field) }
#define POFF(field) { "peer." #field, offsetof(struct pfh_state_peer, field) }
#define SOFF(field) \
	{ "scrub." #field, offsetof(struct pfh_state_scrub, field) }

static const struct {
	const char *name;
	size_t offset;
} offsets[] = {
	OFF(id), OFF(ifname), OFF(key), OFF(src), OFF(dst), OFF(rt_addr),
	OFF(rule), OFF(anchor), OFF(nat_rule), OFF(creation), OFF(expire),
	OFF(packets), OFF(bytes), OFF(creatorid), OFF(rtableid), OFF(max_mss),
	OFF(af), OFF(proto), OFF(direction), OFF(log), OFF(rt), OFF(timeout),
	OFF(sync_flags), OFF(updates), OFF(min_ttl), OFF(set_tos),
	OFF(state_flags), OFF(set_prio),
	KOFF(addr), KOFF(port), KOFF(rdomain), KOFF(af), KOFF(pad),
	POFF(scrub), POFF(seqlo), POFF(seqhi), POFF(seqdiff), POFF(max_win),
	POFF(mss), POFF(state), POFF(wscale), POFF(pad),
	SOFF(pfss_flags), SOFF(pfss_ttl), SOFF(scrub_flag), SOFF(pfss_ts_mod),
};

size_t
pfh_offset(const char *field)
{
	size_t i;

	for (i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++)
		if (strcmp(offsets[i].name, field) == 0)
			return offsets[i].offset;
	return (size_t)-1;
}
