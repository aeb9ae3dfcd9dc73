/*
 * pfh.h - the whole C API of pfhistory's native layer, as cffi reads it.
 *
 * Kept free of #include and #if so that cffi's cdef can parse it verbatim;
 * C files include <stddef.h> and <stdint.h> before it.
 */

/* One exported state record: sizeof(struct pfsync_state), sys/net/pfvar.h. */
#define PFH_RECORD_SIZE 264
#define PFH_ADDR_SIZE 16
#define PFH_IFNAME_SIZE 16

/*
 * Columns of decoded values. pfh_decode() writes records column by column
 * (column c of record i at out[c * stride + i]) so that Python can turn a
 * column into a list in one call. Every value is in host order.
 */

/* Unsigned 64-bit columns (may use all 64 bits). */
enum pfh_u64_column {
	PFH_U64_ID,		/* betoh64(id), as pfctl prints it */
	PFH_U64_PACKETS0,
	PFH_U64_PACKETS1,
	PFH_U64_BYTES0,
	PFH_U64_BYTES1,
	PFH_U64_NCOLUMNS
};

/* Signed 64-bit columns: every other numeric field. */
enum pfh_num_column {
	PFH_NUM_CREATORID,
	PFH_NUM_RULE,
	PFH_NUM_ANCHOR,
	PFH_NUM_NAT_RULE,
	PFH_NUM_CREATION,
	PFH_NUM_EXPIRE,
	PFH_NUM_RTABLEID0,	/* signed: -1 means unset */
	PFH_NUM_RTABLEID1,
	PFH_NUM_MAX_MSS,
	PFH_NUM_AF,		/* record's af: 2 or 24 (OpenBSD's AF_INET6) */
	PFH_NUM_PROTO,
	PFH_NUM_DIRECTION,
	PFH_NUM_LOG,
	PFH_NUM_RT,
	PFH_NUM_TIMEOUT,
	PFH_NUM_SYNC_FLAGS,
	PFH_NUM_UPDATES,
	PFH_NUM_MIN_TTL,
	PFH_NUM_SET_TOS,
	PFH_NUM_STATE_FLAGS,
	PFH_NUM_SET_PRIO0,
	PFH_NUM_SET_PRIO1,
	/* key[PF_SK_WIRE] */
	PFH_NUM_WIRE_PORT0,
	PFH_NUM_WIRE_PORT1,
	PFH_NUM_WIRE_RDOMAIN,
	PFH_NUM_WIRE_AF,
	/* key[PF_SK_STACK] */
	PFH_NUM_STACK_PORT0,
	PFH_NUM_STACK_PORT1,
	PFH_NUM_STACK_RDOMAIN,
	PFH_NUM_STACK_AF,
	/* the record's src peer */
	PFH_NUM_SRC_SEQLO,
	PFH_NUM_SRC_SEQHI,
	PFH_NUM_SRC_SEQDIFF,
	PFH_NUM_SRC_MAX_WIN,
	PFH_NUM_SRC_MSS,
	PFH_NUM_SRC_STATE,
	PFH_NUM_SRC_WSCALE,
	PFH_NUM_SRC_PFSS_FLAGS,
	PFH_NUM_SRC_PFSS_TTL,
	PFH_NUM_SRC_SCRUB_FLAG,
	PFH_NUM_SRC_PFSS_TS_MOD,
	/* the record's dst peer, same order as src */
	PFH_NUM_DST_SEQLO,
	PFH_NUM_DST_SEQHI,
	PFH_NUM_DST_SEQDIFF,
	PFH_NUM_DST_MAX_WIN,
	PFH_NUM_DST_MSS,
	PFH_NUM_DST_STATE,
	PFH_NUM_DST_WSCALE,
	PFH_NUM_DST_PFSS_FLAGS,
	PFH_NUM_DST_PFSS_TTL,
	PFH_NUM_DST_SCRUB_FLAG,
	PFH_NUM_DST_PFSS_TS_MOD,
	/*
	 * A 64-bit hash of the fields that change while a state lives, except
	 * creation and expire: both peers, the counters, timeout, sync_flags,
	 * updates and state_flags. Lets a collector see what changed without
	 * keeping every value; stable across pfhistory versions.
	 */
	PFH_NUM_DYN_HASH,
	/*
	 * A 64-bit hash of both peers alone (a different seed), so a collector
	 * rewrites a state's peers only when they changed, not every time its
	 * counters move. Stable across pfhistory versions.
	 */
	PFH_NUM_PEER_HASH,
	/* indexes into the table of distinct 16-byte values */
	PFH_NUM_IFNAME_REF,
	PFH_NUM_WIRE_ADDR0_REF,
	PFH_NUM_WIRE_ADDR1_REF,
	PFH_NUM_STACK_ADDR0_REF,
	PFH_NUM_STACK_ADDR1_REF,
	PFH_NUM_RT_ADDR_REF,
	PFH_NUM_NCOLUMNS
};

/*
 * The 16-byte fields (interface name, the keys' four addresses, rt_addr)
 * are interned: column PFH_NUM_*_REF of a record holds an index into a table
 * of distinct values, each PFH_UNIQ_SIZE bytes: kind (PFH_UNIQ_IFNAME or
 * PFH_UNIQ_ADDR), the af the address is read with (the key's af; the
 * state's for rt_addr; 0 for a name), then the 16 bytes as they were.
 * A table holds at most 6 entries per record.
 */
#define PFH_UNIQ_SIZE 18
#define PFH_UNIQ_IFNAME 1
#define PFH_UNIQ_ADDR 2
#define PFH_UNIQ_PER_RECORD 6

/* Most bytes pfh_format() writes for one record. */
#define PFH_TEXT_MAX 1024
/* Longest protocol name pfh_format() accepts. */
#define PFH_PROTONAME_MAX 32

/*
 * Decode count records of buf (count * PFH_RECORD_SIZE bytes) with the byte
 * order pf_state_export() writes (sys/net/pf.c). stride is
 * pfh_column_stride(count); u64 holds stride * PFH_U64_NCOLUMNS values, num
 * stride * PFH_NUM_NCOLUMNS, uniq count * PFH_UNIQ_PER_RECORD entries.
 * Returns the number of distinct 16-byte values written to uniq, or
 * (size_t)-1 if memory ran out. Any bytes decode; nothing is validated.
 */
size_t pfh_column_stride(size_t count);
size_t pfh_decode(const uint8_t *buf, size_t count, size_t stride,
    uint64_t *u64, int64_t *num, uint8_t *uniq);

/*
 * Write what OpenBSD's pfctl -ss (verbose 0), -ss -v (1) or -ss -vv (2)
 * prints for count records to out (room for count * PFH_TEXT_MAX bytes).
 * protonames[p] is the name of IP protocol p, or NULL to print the number.
 * Returns the number of bytes written (no NUL).
 */
size_t pfh_format(const uint8_t *buf, size_t count, int verbose,
    const char *const *protonames, char *out);

/* Results of pfh_fetch_states(). */
#define PFH_OK 0
#define PFH_ENOTSUPPORTED -1	/* not built for OpenBSD */
#define PFH_ESYS -2		/* a system call failed: see errno_out */

/*
 * Read the live state table from an open /dev/pf descriptor with
 * DIOCGETSTATES and pfctl's buffer-growth loop. On PFH_OK, *buf_out holds
 * *len_out bytes of records (free it with pfh_free); a table with no states
 * gives *buf_out == NULL and *len_out == 0.
 */
int pfh_fetch_states(int fd, uint8_t **buf_out, size_t *len_out,
    int *errno_out);
void pfh_free(void *p);

/*
 * Write count records to out (count * PFH_RECORD_SIZE bytes) from rows of
 * 64-bit values, one row a record. format has a letter per record field,
 * in the record's order, for what the row holds for it:
 *   'q' a value, written as 8 bytes big-endian (two's complement);
 *   'I' a value, written as its low 4 bytes, big-endian;
 *   'U' a value, written as 4 bytes, clamped to 0..UINT32_MAX;
 *   'A' a key of keys (nkeys, ascending): written as its entry of forms
 *       (16 bytes an entry, in the order of keys);
 *   's' 16 bytes as they are, in two slots.
 * Returns count; the first row with a key keys lacks; or (size_t)-1 for a
 * format that does not make a record.
 */
size_t pfh_pack(const int64_t *rows, size_t count, const char *format,
    const int64_t *keys, const uint8_t *forms, size_t nkeys, uint8_t *out);

/*
 * The keys of the 'A' fields of count rows packed by format, as pfh_pack()
 * reads them: written ascending and without repeats to keys (room for a
 * key per 'A' field of every row). Returns how many; (size_t)-1 for a
 * format pfh_pack() refuses; (size_t)-2 if memory ran out.
 */
size_t pfh_pack_keys(const int64_t *rows, size_t count, const char *format,
    int64_t *keys);

/*
 * Copy count records to out in the order the kernel lists states: by id,
 * then creatorid (pf_state_insert() keeps them in id order). Returns 0,
 * or -1 if memory ran out.
 */
int pfh_sort_by_id(const uint8_t *records, size_t count, uint8_t *out);

/* Our record's size and field offsets, for the layout test. */
size_t pfh_record_size(void);
size_t pfh_offset(const char *field);
