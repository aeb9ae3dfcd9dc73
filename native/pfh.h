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
 * Columns of decoded values. pfh_decode() writes N records column by column
 * (column c of record i at out[c * n + i]) so that Python can turn a column
 * into a list in one call. Every value is in host order.
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
	PFH_NUM_NCOLUMNS
};

/*
 * 16-byte strings, copied as they are (addresses stay in network order),
 * also column by column: record i's field c is at out[(c * n + i) * 16].
 */
enum pfh_blob_column {
	PFH_BLOB_IFNAME,		/* NUL not guaranteed */
	PFH_BLOB_WIRE_ADDR0,
	PFH_BLOB_WIRE_ADDR1,
	PFH_BLOB_STACK_ADDR0,
	PFH_BLOB_STACK_ADDR1,
	PFH_BLOB_RT_ADDR,
	PFH_BLOB_NCOLUMNS
};
#define PFH_BLOB_WIDTH 16

/*
 * Decode n records of buf (n * PFH_RECORD_SIZE bytes) with the byte order
 * pf_state_export() writes (sys/net/pf.c). u64 holds n * PFH_U64_NCOLUMNS
 * values, num n * PFH_NUM_NCOLUMNS, blob n * PFH_BLOB_NCOLUMNS * 16 bytes.
 * Any bytes decode; nothing is validated here.
 */
void pfh_decode(const uint8_t *buf, size_t n, uint64_t *u64, int64_t *num,
    uint8_t *blob);

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

/* Our record's size and field offsets, for the layout test. */
size_t pfh_record_size(void);
size_t pfh_offset(const char *field);
