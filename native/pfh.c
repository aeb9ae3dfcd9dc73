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
#include "pfh.h"

_Static_assert(PFH_RECORD_SIZE == sizeof(struct pfh_pfsync_state),
    "PFH_RECORD_SIZE matches the declared record");
_Static_assert(PFH_BLOB_WIDTH == sizeof(struct pfh_addr) &&
    PFH_BLOB_WIDTH == PFH_IFNAME_SIZE, "blob columns hold an address or a name");

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

static inline uint16_t
be16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t
be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	    ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline uint64_t
be64(const uint8_t *p)
{
	return ((uint64_t)be32(p) << 32) | be32(p + 4);
}

#define AT(rec, field) ((rec) + offsetof(struct pfh_pfsync_state, field))
#define PEER_AT(peer, field) ((peer) + offsetof(struct pfh_state_peer, field))
#define KEY_AT(key, field) ((key) + offsetof(struct pfh_state_key, field))
#define BLOB(blob, n, i, c) ((blob) + ((size_t)(c) * (n) + (i)) * PFH_BLOB_WIDTH)

/* Write one peer's 11 columns, starting at column first. */
static void
decode_peer(const uint8_t *p, int64_t *num, size_t n, size_t i, int first)
{
	const uint8_t *scrub = PEER_AT(p, scrub);

	/* pf_state_peer_hton(): htonl seq*, htons max_win/mss; u8 raw. */
	num[(first + 0) * n + i] = be32(PEER_AT(p, seqlo));
	num[(first + 1) * n + i] = be32(PEER_AT(p, seqhi));
	num[(first + 2) * n + i] = be32(PEER_AT(p, seqdiff));
	num[(first + 3) * n + i] = be16(PEER_AT(p, max_win));
	num[(first + 4) * n + i] = be16(PEER_AT(p, mss));
	num[(first + 5) * n + i] = p[offsetof(struct pfh_state_peer, state)];
	num[(first + 6) * n + i] = p[offsetof(struct pfh_state_peer, wscale)];
	/* scrub: htons(pfss_flags), htonl(pfss_ts_mod); u8 raw. */
	num[(first + 7) * n + i] = be16(scrub +
	    offsetof(struct pfh_state_scrub, pfss_flags));
	num[(first + 8) * n + i] =
	    scrub[offsetof(struct pfh_state_scrub, pfss_ttl)];
	num[(first + 9) * n + i] =
	    scrub[offsetof(struct pfh_state_scrub, scrub_flag)];
	num[(first + 10) * n + i] = be32(scrub +
	    offsetof(struct pfh_state_scrub, pfss_ts_mod));
}

/* Write one key's port0, port1, rdomain and af columns. */
static void
decode_key(const uint8_t *k, int64_t *num, size_t n, size_t i, int first)
{
	/* Ports are kept in network order by pf; rdomain is htons'd. */
	num[(first + 0) * n + i] = be16(KEY_AT(k, port));
	num[(first + 1) * n + i] = be16(KEY_AT(k, port) + 2);
	num[(first + 2) * n + i] = be16(KEY_AT(k, rdomain));
	num[(first + 3) * n + i] = k[offsetof(struct pfh_state_key, af)];
}

void
pfh_decode(const uint8_t *buf, size_t n, uint64_t *u64, int64_t *num,
    uint8_t *blob)
{
	const size_t key_size = sizeof(struct pfh_state_key);
	size_t i;

	for (i = 0; i < n; i++) {
		const uint8_t *r = buf + i * PFH_RECORD_SIZE;
		const uint8_t *wire = AT(r, key);
		const uint8_t *stack = wire + key_size;

		/* id: htobe64 in pf_state_insert(); pfctl prints betoh64. */
		u64[PFH_U64_ID * n + i] = be64(AT(r, id));
		/* pf_state_counter_hton(): htonl(high), htonl(low). */
		u64[PFH_U64_PACKETS0 * n + i] = be64(AT(r, packets));
		u64[PFH_U64_PACKETS1 * n + i] = be64(AT(r, packets) + 8);
		u64[PFH_U64_BYTES0 * n + i] = be64(AT(r, bytes));
		u64[PFH_U64_BYTES1 * n + i] = be64(AT(r, bytes) + 8);

		num[PFH_NUM_CREATORID * n + i] = be32(AT(r, creatorid));
		num[PFH_NUM_RULE * n + i] = be32(AT(r, rule));
		num[PFH_NUM_ANCHOR * n + i] = be32(AT(r, anchor));
		num[PFH_NUM_NAT_RULE * n + i] = be32(AT(r, nat_rule));
		num[PFH_NUM_CREATION * n + i] = be32(AT(r, creation));
		num[PFH_NUM_EXPIRE * n + i] = be32(AT(r, expire));
		num[PFH_NUM_RTABLEID0 * n + i] = (int32_t)be32(AT(r, rtableid));
		num[PFH_NUM_RTABLEID1 * n + i] =
		    (int32_t)be32(AT(r, rtableid) + 4);
		num[PFH_NUM_MAX_MSS * n + i] = be16(AT(r, max_mss));
		num[PFH_NUM_AF * n + i] = *AT(r, af);
		num[PFH_NUM_PROTO * n + i] = *AT(r, proto);
		num[PFH_NUM_DIRECTION * n + i] = *AT(r, direction);
		num[PFH_NUM_LOG * n + i] = *AT(r, log);
		num[PFH_NUM_RT * n + i] = *AT(r, rt);
		num[PFH_NUM_TIMEOUT * n + i] = *AT(r, timeout);
		num[PFH_NUM_SYNC_FLAGS * n + i] = *AT(r, sync_flags);
		num[PFH_NUM_UPDATES * n + i] = *AT(r, updates);
		num[PFH_NUM_MIN_TTL * n + i] = *AT(r, min_ttl);
		num[PFH_NUM_SET_TOS * n + i] = *AT(r, set_tos);
		num[PFH_NUM_STATE_FLAGS * n + i] = be16(AT(r, state_flags));
		num[PFH_NUM_SET_PRIO0 * n + i] = AT(r, set_prio)[0];
		num[PFH_NUM_SET_PRIO1 * n + i] = AT(r, set_prio)[1];

		decode_key(wire, num, n, i, PFH_NUM_WIRE_PORT0);
		decode_key(stack, num, n, i, PFH_NUM_STACK_PORT0);
		decode_peer(AT(r, src), num, n, i, PFH_NUM_SRC_SEQLO);
		decode_peer(AT(r, dst), num, n, i, PFH_NUM_DST_SEQLO);

		memcpy(BLOB(blob, n, i, PFH_BLOB_IFNAME), AT(r, ifname), 16);
		memcpy(BLOB(blob, n, i, PFH_BLOB_WIRE_ADDR0), KEY_AT(wire, addr), 16);
		memcpy(BLOB(blob, n, i, PFH_BLOB_WIRE_ADDR1),
		    KEY_AT(wire, addr) + 16, 16);
		memcpy(BLOB(blob, n, i, PFH_BLOB_STACK_ADDR0), KEY_AT(stack, addr),
		    16);
		memcpy(BLOB(blob, n, i, PFH_BLOB_STACK_ADDR1),
		    KEY_AT(stack, addr) + 16, 16);
		memcpy(BLOB(blob, n, i, PFH_BLOB_RT_ADDR), AT(r, rt_addr), 16);
	}
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
