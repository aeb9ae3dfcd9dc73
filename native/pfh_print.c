/*
 * pfh_print.c - pfctl's text for state records, in C for speed.
 *
 * Follows the behaviour of print_state(), print_host() and print_seq() in
 * OpenBSD's sbin/pfctl/pf_print_state.c (1.69) branch by branch, without
 * -r/-P (no DNS or service names). Addresses are formatted by our own
 * inet_ntop with the rules of OpenBSD's lib/libc/net/inet_ntop.c, so the
 * output does not depend on the host's libc. The interface name is escaped
 * like vis(3) with VIS_OCTAL: a hostile name cannot forge output lines.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "pfsync_state.h"
#include "pfh_bytes.h"
#include "pfh.h"

/* sys/sys/socket.h, sys/net/pfvar.h, sys/netinet/tcp_fsm.h */
#define OBSD_AF_INET		2
#define OBSD_AF_INET6		24
#define PF_IN			1
#define PF_OUT			2
#define PF_SK_WIRE		0
#define PF_SK_STACK		1
#define TCPS_TIME_WAIT		10
#define PF_TCPS_PROXY_SRC	11
#define PF_TCPS_PROXY_DST	12
#define PFUDPS_NSTATES		3
#define PFOTHERS_NSTATES	3
#define PF_WSCALE_MASK		0x0f
#define PFSTATE_SLOPPY		0x0002
#define PFSTATE_PFLOW		0x0004
#define PFSYNC_FLAG_SRCNODE	0x04
#define PFSYNC_FLAG_NATSRCNODE	0x08
#define IPPROTO_ICMP_		1
#define IPPROTO_TCP_		6
#define IPPROTO_UDP_		17
#define IPPROTO_ICMPV6_		58

_Static_assert(PFH_TEXT_MAX >= 1024, "room for the longest state text");

static const char *const tcp_states[] = {
	"CLOSED", "LISTEN", "SYN_SENT", "SYN_RCVD", "ESTABLISHED", "CLOSE_WAIT",
	"FIN_WAIT_1", "CLOSING", "LAST_ACK", "FIN_WAIT_2", "TIME_WAIT",
};
/* PFUDPS_NAMES and PFOTHERS_NAMES are the same three words. */
static const char *const pf_states[] = { "NO_TRAFFIC", "SINGLE", "MULTIPLE" };

struct out {
	char *p;
};

static inline void
put(struct out *o, const char *s)
{
	size_t len = strlen(s);

	memcpy(o->p, s, len);
	o->p += len;
}

static inline void
put_ch(struct out *o, char c)
{
	*o->p++ = c;
}

static void
put_u64(struct out *o, uint64_t v)
{
	char tmp[20];
	int i = 0;

	do {
		tmp[i++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (i)
		*o->p++ = tmp[--i];
}

/* %.2u: at least two digits. */
static void
put_u2(struct out *o, uint64_t v)
{
	if (v < 10)
		put_ch(o, '0');
	put_u64(o, v);
}

static void
put_hex(struct out *o, uint64_t v, int width)
{
	static const char digits[] = "0123456789abcdef";
	int i;

	for (i = width - 1; i >= 0; i--)
		*o->p++ = digits[(v >> (i * 4)) & 0xf];
}

/* vis(3) with VIS_OCTAL|VIS_SP|VIS_TAB|VIS_NL of a name up to its NUL. */
static void
put_ifname(struct out *o, const uint8_t *name)
{
	static const char octal[] = "01234567";
	size_t i;

	for (i = 0; i < PFH_IFNAME_SIZE && name[i] != '\0'; i++) {
		uint8_t c = name[i];

		if (c == '\\') {
			put(o, "\\\\");
		} else if (c >= 0x21 && c <= 0x7e) {
			put_ch(o, (char)c);
		} else {
			put_ch(o, '\\');
			put_ch(o, octal[(c >> 6) & 7]);
			put_ch(o, octal[(c >> 3) & 7]);
			put_ch(o, octal[c & 7]);
		}
	}
}

/* "%x" of a 16-bit word. */
static void
put_hex_word(struct out *o, unsigned int w)
{
	int width = w >= 0x1000 ? 4 : w >= 0x100 ? 3 : w >= 0x10 ? 2 : 1;

	put_hex(o, w, width);
}

static void
put_ipv4(struct out *o, const uint8_t *a)
{
	put_u64(o, a[0]);
	put_ch(o, '.');
	put_u64(o, a[1]);
	put_ch(o, '.');
	put_u64(o, a[2]);
	put_ch(o, '.');
	put_u64(o, a[3]);
}

/*
 * IPv6 text as OpenBSD's inet_ntop6() writes it: the longest run (first
 * among equals) of two or more zero words becomes "::"; ::a.b.c.d and
 * ::ffff:a.b.c.d end in a dotted quad; words in lower-case hex.
 */
static void
put_ipv6(struct out *o, const uint8_t *a)
{
	unsigned int words[8];
	int i, best = -1, best_len = 0, cur = -1, cur_len = 0;

	for (i = 0; i < 8; i++)
		words[i] = ((unsigned int)a[2 * i] << 8) | a[2 * i + 1];
	for (i = 0; i < 8; i++) {
		if (words[i] == 0) {
			if (cur == -1) {
				cur = i;
				cur_len = 1;
			} else
				cur_len++;
		} else if (cur != -1) {
			if (best == -1 || cur_len > best_len) {
				best = cur;
				best_len = cur_len;
			}
			cur = -1;
		}
	}
	if (cur != -1 && (best == -1 || cur_len > best_len)) {
		best = cur;
		best_len = cur_len;
	}
	if (best != -1 && best_len < 2)
		best = -1;

	for (i = 0; i < 8; i++) {
		if (best != -1 && i >= best && i < best + best_len) {
			if (i == best)
				put_ch(o, ':');
			continue;
		}
		if (i != 0)
			put_ch(o, ':');
		if (i == 6 && best == 0 &&
		    (best_len == 6 || (best_len == 5 && words[5] == 0xffff))) {
			put_ipv4(o, a + 12);
			break;
		}
		put_hex_word(o, words[i]);
	}
	if (best != -1 && best + best_len == 8)
		put_ch(o, ':');
}

/* print_addr_str(): inet_ntop by af, "?" for an af it does not know. */
static void
put_addr(struct out *o, const uint8_t *a, uint8_t af)
{
	if (af == OBSD_AF_INET)
		put_ipv4(o, a);
	else if (af == OBSD_AF_INET6)
		put_ipv6(o, a);
	else
		put_ch(o, '?');
}

/* PF_AZERO() and PF_ANEQ() of sys/net/pfvar.h: false for other afs. */
static int
azero(const uint8_t *a, uint8_t af)
{
	static const uint8_t zero[16];

	if (af == OBSD_AF_INET)
		return memcmp(a, zero, 4) == 0;
	if (af == OBSD_AF_INET6)
		return memcmp(a, zero, 16) == 0;
	return 0;
}

static int
aneq(const uint8_t *a, const uint8_t *b, uint8_t af)
{
	if (af == OBSD_AF_INET)
		return memcmp(a, b, 4) != 0;
	if (af == OBSD_AF_INET6)
		return memcmp(a, b, 16) != 0;
	return 0;
}

/* print_host(): "(rdomain) ", the address, then ":port" or "[port]". */
static void
put_host(struct out *o, const uint8_t *addr, uint16_t port, uint8_t af,
    uint16_t rdomain)
{
	if (rdomain) {
		put_ch(o, '(');
		put_u64(o, rdomain);
		put(o, ") ");
	}
	put_addr(o, addr, af);
	if (port) {
		put_ch(o, af == OBSD_AF_INET ? ':' : '[');
		put_u64(o, port);
		if (af != OBSD_AF_INET)
			put_ch(o, ']');
	}
}

/* print_seq(): "[seqlo + seqhi-seqlo]" and "(+seqdiff)" when modulated. */
static void
put_seq(struct out *o, const uint8_t *peer)
{
	uint32_t seqlo = be32(peer + offsetof(struct pfh_state_peer, seqlo));
	uint32_t seqhi = be32(peer + offsetof(struct pfh_state_peer, seqhi));
	uint32_t seqdiff = be32(peer + offsetof(struct pfh_state_peer, seqdiff));

	put_ch(o, '[');
	put_u64(o, seqlo);
	put(o, " + ");
	put_u64(o, (uint32_t)(seqhi - seqlo));
	put_ch(o, ']');
	if (seqdiff) {
		put(o, "(+");
		put_u64(o, seqdiff);
		put_ch(o, ')');
	}
}

static void
put_hms(struct out *o, uint32_t t)
{
	put_u2(o, t / 3600);
	put_ch(o, ':');
	put_u2(o, (t / 60) % 60);
	put_ch(o, ':');
	put_u2(o, t % 60);
}

/* A key as print_state() sees it; ports may be patched for ICMP. */
struct key {
	const uint8_t *addr[2];
	uint16_t port[2];
	uint16_t rdomain;
	uint8_t af;
};

static void
load_key(struct key *k, const uint8_t *raw)
{
	k->addr[0] = raw + offsetof(struct pfh_state_key, addr);
	k->addr[1] = k->addr[0] + 16;
	k->port[0] = be16(raw + offsetof(struct pfh_state_key, port));
	k->port[1] = be16(raw + offsetof(struct pfh_state_key, port) + 2);
	k->rdomain = be16(raw + offsetof(struct pfh_state_key, rdomain));
	k->af = raw[offsetof(struct pfh_state_key, af)];
}

#define AT(rec, field) ((rec) + offsetof(struct pfh_pfsync_state, field))

static char *
format_one(char *p, const uint8_t *r, int verbose,
    const char *const *protonames)
{
	struct out o = { p };
	struct key keys[2], *nk, *sk;
	const uint8_t *key_base = AT(r, key);
	const uint8_t *src, *dst, *rt_addr = AT(r, rt_addr);
	uint8_t direction = *AT(r, direction), proto = *AT(r, proto);
	uint8_t s_state, d_state;
	int afto, idx;

	load_key(&keys[PF_SK_WIRE], key_base);
	load_key(&keys[PF_SK_STACK], key_base + sizeof(struct pfh_state_key));
	afto = keys[PF_SK_STACK].af != keys[PF_SK_WIRE].af;
	if (direction == PF_OUT) {
		src = AT(r, src);
		dst = AT(r, dst);
		sk = &keys[PF_SK_STACK];
		nk = &keys[PF_SK_WIRE];
		if (proto == IPPROTO_ICMP_ || proto == IPPROTO_ICMPV6_)
			sk->port[0] = nk->port[0];
	} else {
		src = AT(r, dst);
		dst = AT(r, src);
		sk = &keys[PF_SK_WIRE];
		nk = &keys[PF_SK_STACK];
		if (proto == IPPROTO_ICMP_ || proto == IPPROTO_ICMPV6_)
			sk->port[1] = nk->port[1];
	}

	put_ifname(&o, AT(r, ifname));
	put_ch(&o, ' ');
	if (protonames[proto] != NULL)
		put(&o, protonames[proto]);
	else
		put_u64(&o, proto);
	put_ch(&o, ' ');

	put_host(&o, nk->addr[1], nk->port[1], nk->af, nk->rdomain);
	if (nk->af != sk->af || aneq(nk->addr[1], sk->addr[1], nk->af) ||
	    nk->port[1] != sk->port[1] || nk->rdomain != sk->rdomain) {
		idx = afto ? 0 : 1;
		put(&o, " (");
		put_host(&o, sk->addr[idx], sk->port[idx], sk->af,
		    sk->rdomain);
		put_ch(&o, ')');
	}
	if (direction == PF_IN && !azero(rt_addr, sk->af)) {
		put(&o, " {");
		put_addr(&o, rt_addr, sk->af);
		put_ch(&o, '}');
	}
	if (direction == PF_OUT || (afto && direction == PF_IN))
		put(&o, " -> ");
	else
		put(&o, " <- ");
	put_host(&o, nk->addr[0], nk->port[0], nk->af, nk->rdomain);
	if (nk->af != sk->af || aneq(nk->addr[0], sk->addr[0], nk->af) ||
	    nk->port[0] != sk->port[0] || nk->rdomain != sk->rdomain) {
		idx = afto ? 1 : 0;
		put(&o, " (");
		put_host(&o, sk->addr[idx], sk->port[idx], sk->af,
		    sk->rdomain);
		put_ch(&o, ')');
	}
	if (direction == PF_OUT && !azero(rt_addr, nk->af)) {
		put(&o, " {");
		put_addr(&o, rt_addr, nk->af);
		put_ch(&o, '}');
	}

	put(&o, "    ");
	s_state = src[offsetof(struct pfh_state_peer, state)];
	d_state = dst[offsetof(struct pfh_state_peer, state)];
	if (proto == IPPROTO_TCP_) {
		if (s_state <= TCPS_TIME_WAIT && d_state <= TCPS_TIME_WAIT) {
			put(&o, "   ");
			put(&o, tcp_states[s_state]);
			put_ch(&o, ':');
			put(&o, tcp_states[d_state]);
			put_ch(&o, '\n');
		} else if (s_state == PF_TCPS_PROXY_SRC ||
		    d_state == PF_TCPS_PROXY_SRC) {
			put(&o, "   PROXY:SRC\n");
		} else if (s_state == PF_TCPS_PROXY_DST ||
		    d_state == PF_TCPS_PROXY_DST) {
			put(&o, "   PROXY:DST\n");
		} else {
			put(&o, "   <BAD STATE LEVELS ");
			put_u64(&o, s_state);
			put_ch(&o, ':');
			put_u64(&o, d_state);
			put(&o, ">\n");
		}
		if (verbose >= 1) {
			uint8_t s_ws = src[offsetof(struct pfh_state_peer,
			    wscale)];
			uint8_t d_ws = dst[offsetof(struct pfh_state_peer,
			    wscale)];

			put(&o, "   ");
			put_seq(&o, src);
			if (s_ws && d_ws) {
				put(&o, " wscale ");
				put_u64(&o, s_ws & PF_WSCALE_MASK);
			}
			put(&o, "  ");
			put_seq(&o, dst);
			if (s_ws && d_ws) {
				put(&o, " wscale ");
				put_u64(&o, d_ws & PF_WSCALE_MASK);
			}
			put_ch(&o, '\n');
		}
	} else if ((proto == IPPROTO_UDP_ && s_state < PFUDPS_NSTATES &&
	    d_state < PFUDPS_NSTATES) ||
	    (proto != IPPROTO_ICMP_ && proto != IPPROTO_ICMPV6_ &&
	    s_state < PFOTHERS_NSTATES && d_state < PFOTHERS_NSTATES)) {
		put(&o, "   ");
		put(&o, pf_states[s_state]);
		put_ch(&o, ':');
		put(&o, pf_states[d_state]);
		put_ch(&o, '\n');
	} else {
		put(&o, "   ");
		put_u64(&o, s_state);
		put_ch(&o, ':');
		put_u64(&o, d_state);
		put_ch(&o, '\n');
	}

	if (verbose >= 1) {
		uint32_t anchor = be32(AT(r, anchor)), rule = be32(AT(r, rule));
		uint16_t state_flags = be16(AT(r, state_flags));
		uint8_t sync_flags = *AT(r, sync_flags);

		put(&o, "   age ");
		put_hms(&o, be32(AT(r, creation)));
		put(&o, ", expires in ");
		put_hms(&o, be32(AT(r, expire)));
		put(&o, ", ");
		put_u64(&o, be64(AT(r, packets)));
		put_ch(&o, ':');
		put_u64(&o, be64(AT(r, packets) + 8));
		put(&o, " pkts, ");
		put_u64(&o, be64(AT(r, bytes)));
		put_ch(&o, ':');
		put_u64(&o, be64(AT(r, bytes) + 8));
		put(&o, " bytes");
		if (anchor != UINT32_MAX) {
			put(&o, ", anchor ");
			put_u64(&o, anchor);
		}
		if (rule != UINT32_MAX) {
			put(&o, ", rule ");
			put_u64(&o, rule);
		}
		if (state_flags & PFSTATE_SLOPPY)
			put(&o, ", sloppy");
		if (state_flags & PFSTATE_PFLOW)
			put(&o, ", pflow");
		if (sync_flags & PFSYNC_FLAG_SRCNODE)
			put(&o, ", source-track");
		if (sync_flags & PFSYNC_FLAG_NATSRCNODE)
			put(&o, ", sticky-address");
		put_ch(&o, '\n');
	}
	if (verbose >= 2) {
		put(&o, "   id: ");
		put_hex(&o, be64(AT(r, id)), 16);
		put(&o, " creatorid: ");
		put_hex(&o, be32(AT(r, creatorid)), 8);
		put_ch(&o, '\n');
	}
	return o.p;
}

size_t
pfh_format(const uint8_t *buf, size_t count, int verbose,
    const char *const *protonames, char *out)
{
	char *p = out;
	size_t i;

	for (i = 0; i < count; i++)
		p = format_one(p, buf + i * PFH_RECORD_SIZE, verbose,
		    protonames);
	return (size_t)(p - out);
}
