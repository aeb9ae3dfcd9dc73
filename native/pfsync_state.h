/*
 * pfsync_state.h - our own declaration of OpenBSD's pfsync v6 state record.
 *
 * The record is a wire format (pfsync(4) and DIOCGETSTATES share it), so we
 * declare it here instead of relying on <net/pfvar.h>, which exists only on
 * OpenBSD. Field names follow sys/net/pfvar.h; sizes and offsets are checked
 * at compile time below, and against the system header on OpenBSD.
 */
#ifndef PFH_PFSYNC_STATE_H
#define PFH_PFSYNC_STATE_H

#include <stddef.h>
#include <stdint.h>

#define PFH_PACKED __attribute__((__packed__))

struct pfh_addr {			/* struct pf_addr */
	uint8_t		addr8[16];
};

struct pfh_state_scrub {		/* struct pfsync_state_scrub */
	uint16_t	pfss_flags;
	uint8_t		pfss_ttl;
	uint8_t		scrub_flag;
	uint32_t	pfss_ts_mod;
} PFH_PACKED;

struct pfh_state_peer {			/* struct pfsync_state_peer */
	struct pfh_state_scrub scrub;
	uint32_t	seqlo;
	uint32_t	seqhi;
	uint32_t	seqdiff;
	uint16_t	max_win;
	uint16_t	mss;
	uint8_t		state;
	uint8_t		wscale;
	uint8_t		pad[6];
} PFH_PACKED;

struct pfh_state_key {			/* struct pfsync_state_key */
	struct pfh_addr	addr[2];
	uint16_t	port[2];
	uint16_t	rdomain;
	uint8_t		af;
	uint8_t		pad;
} PFH_PACKED;

struct pfh_pfsync_state {		/* struct pfsync_state */
	uint64_t	id;
	char		ifname[16];
	struct pfh_state_key key[2];	/* [PF_SK_WIRE], [PF_SK_STACK] */
	struct pfh_state_peer src;
	struct pfh_state_peer dst;
	struct pfh_addr	rt_addr;
	uint32_t	rule;
	uint32_t	anchor;
	uint32_t	nat_rule;
	uint32_t	creation;
	uint32_t	expire;
	uint32_t	packets[2][2];
	uint32_t	bytes[2][2];
	uint32_t	creatorid;
	int32_t		rtableid[2];
	uint16_t	max_mss;
	uint8_t		af;
	uint8_t		proto;
	uint8_t		direction;
	uint8_t		log;
	uint8_t		rt;
	uint8_t		timeout;
	uint8_t		sync_flags;
	uint8_t		updates;
	uint8_t		min_ttl;
	uint8_t		set_tos;
	uint16_t	state_flags;
	uint8_t		set_prio[2];
} PFH_PACKED;

#define PFH_ASSERT_AT(type, field, off) \
	_Static_assert(offsetof(struct type, field) == (off), \
	    #type "." #field " must be at offset " #off)

/* Offsets and sizes: ../shared/reference/pf-formats.md section 1. */
_Static_assert(sizeof(struct pfh_addr) == 16, "pf_addr is 16 bytes");
_Static_assert(sizeof(struct pfh_state_scrub) == 8, "scrub is 8 bytes");
_Static_assert(sizeof(struct pfh_state_peer) == 32, "peer is 32 bytes");
_Static_assert(sizeof(struct pfh_state_key) == 40, "key is 40 bytes");
_Static_assert(sizeof(struct pfh_pfsync_state) == 264, "record is 264 bytes");

PFH_ASSERT_AT(pfh_state_scrub, pfss_flags, 0);
PFH_ASSERT_AT(pfh_state_scrub, pfss_ttl, 2);
PFH_ASSERT_AT(pfh_state_scrub, scrub_flag, 3);
PFH_ASSERT_AT(pfh_state_scrub, pfss_ts_mod, 4);

PFH_ASSERT_AT(pfh_state_peer, scrub, 0);
PFH_ASSERT_AT(pfh_state_peer, seqlo, 8);
PFH_ASSERT_AT(pfh_state_peer, seqhi, 12);
PFH_ASSERT_AT(pfh_state_peer, seqdiff, 16);
PFH_ASSERT_AT(pfh_state_peer, max_win, 20);
PFH_ASSERT_AT(pfh_state_peer, mss, 22);
PFH_ASSERT_AT(pfh_state_peer, state, 24);
PFH_ASSERT_AT(pfh_state_peer, wscale, 25);
PFH_ASSERT_AT(pfh_state_peer, pad, 26);

PFH_ASSERT_AT(pfh_state_key, addr, 0);
PFH_ASSERT_AT(pfh_state_key, port, 32);
PFH_ASSERT_AT(pfh_state_key, rdomain, 36);
PFH_ASSERT_AT(pfh_state_key, af, 38);
PFH_ASSERT_AT(pfh_state_key, pad, 39);

PFH_ASSERT_AT(pfh_pfsync_state, id, 0);
PFH_ASSERT_AT(pfh_pfsync_state, ifname, 8);
PFH_ASSERT_AT(pfh_pfsync_state, key, 24);
PFH_ASSERT_AT(pfh_pfsync_state, src, 104);
PFH_ASSERT_AT(pfh_pfsync_state, dst, 136);
PFH_ASSERT_AT(pfh_pfsync_state, rt_addr, 168);
PFH_ASSERT_AT(pfh_pfsync_state, rule, 184);
PFH_ASSERT_AT(pfh_pfsync_state, anchor, 188);
PFH_ASSERT_AT(pfh_pfsync_state, nat_rule, 192);
PFH_ASSERT_AT(pfh_pfsync_state, creation, 196);
PFH_ASSERT_AT(pfh_pfsync_state, expire, 200);
PFH_ASSERT_AT(pfh_pfsync_state, packets, 204);
PFH_ASSERT_AT(pfh_pfsync_state, bytes, 220);
PFH_ASSERT_AT(pfh_pfsync_state, creatorid, 236);
PFH_ASSERT_AT(pfh_pfsync_state, rtableid, 240);
PFH_ASSERT_AT(pfh_pfsync_state, max_mss, 248);
PFH_ASSERT_AT(pfh_pfsync_state, af, 250);
PFH_ASSERT_AT(pfh_pfsync_state, proto, 251);
PFH_ASSERT_AT(pfh_pfsync_state, direction, 252);
PFH_ASSERT_AT(pfh_pfsync_state, log, 253);
PFH_ASSERT_AT(pfh_pfsync_state, rt, 254);
PFH_ASSERT_AT(pfh_pfsync_state, timeout, 255);
PFH_ASSERT_AT(pfh_pfsync_state, sync_flags, 256);
PFH_ASSERT_AT(pfh_pfsync_state, updates, 257);
PFH_ASSERT_AT(pfh_pfsync_state, min_ttl, 258);
PFH_ASSERT_AT(pfh_pfsync_state, set_tos, 259);
PFH_ASSERT_AT(pfh_pfsync_state, state_flags, 260);
PFH_ASSERT_AT(pfh_pfsync_state, set_prio, 262);

#endif /* PFH_PFSYNC_STATE_H */
