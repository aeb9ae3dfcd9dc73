"""The history's tables, as SQLAlchemy 2 declarative models (alembic owns them).

Conventions, chosen for a firewall's small disk and for PostgreSQL fleets:
- instants are INTEGER seconds since the epoch, UTC (the views show them as text);
- collections are referred to by id (first_seen, last_seen, ended_before);
- addresses live once each in ``addresses`` (text for people, a 4- or
  16-byte binary form whose order is numeric, for CIDR range scans);
- 64-bit values PF treats as unsigned (state id) are stored as signed
  two's complement (PostgreSQL has no unsigned BIGINT); counters beyond
  2**63 - 1 are stored as 2**63 - 1;
- a state's current values live in ``states``/``state_peers``; when they
  change, the previous values move to ``samples`` with the collections
  they held for, so any collection inside the sample retention can be
  rebuilt exactly.
"""

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Collection", "Address", "State", "StateKey", "StatePeer", "Sample",
           "PeerSample", "Rollup", "RollupHour", "PartialState", "Protocol", "Setting",
           "PEER_FIELDS", "DYNAMIC_STATE_FIELDS", "SAMPLE_INDEXED"]

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The PFStatePeer fields, in py-pf's order.
PEER_FIELDS = ("seqlo", "seqhi", "seqdiff", "max_win", "mss", "state", "wscale",
               "pfss_flags", "pfss_ttl", "scrub_flag", "pfss_ts_mod")
# The samples in ix_samples_state_pk on SQLite (see Sample).
SAMPLE_INDEXED = "valid_until - valid_from > 1 OR present = 0"
# State fields that may change while it lives (besides its two peers).
DYNAMIC_STATE_FIELDS = ("created_at", "expires_at", "packets0", "packets1", "bytes0",
                        "bytes1", "timeout", "sync_flags", "updates", "state_flags")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


# states.pk and the columns that refer to it: 64-bit on PostgreSQL, where
# INTEGER is 32 (a busy firewall's states would outgrow it in a month);
# INTEGER on SQLite, 64-bit there, where states.pk must be it to be the rowid.
STATE_PK = BigInteger().with_variant(Integer(), "sqlite")


def _int(**kw):
    return mapped_column(Integer, **kw)


def _big(**kw):
    return mapped_column(BigInteger, **kw)


def _small(**kw):
    return mapped_column(SmallInteger, **kw)


class Collection(Base):
    """One run of the collector: one snapshot of the table, and its aggregates."""

    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    collected_at: Mapped[int] = _big(index=True, doc="when the snapshot was taken (epoch s, UTC)")
    kind: Mapped[int] = _small(default=0, server_default=text("0"),
                               doc="0: a snapshot of the whole table; 1: a batch of pfsync "
                                   "events (collected_at: its last packet)")
    malformed: Mapped[int] = _int(default=0, server_default=text("0"),
                                  doc="pfsync packets of the batch refused as malformed")
    source: Mapped[str] = mapped_column(Text, doc="'/dev/pf' or the state file's path")
    host: Mapped[str] = mapped_column(Text, doc="the collector's host name")
    creatorid: Mapped[int | None] = _big(doc="the firewall's hostid (most states' creatorid)")
    states: Mapped[int] = _int(doc="states in the snapshot")
    inserted: Mapped[int] = _int(doc="states seen for the first time")
    updated: Mapped[int] = _int(doc="states whose values changed")
    reopened: Mapped[int] = _int(doc="states seen again after a collection missed them")
    closed: Mapped[int] = _int(doc="states the previous collection saw and this one did not")
    packets: Mapped[int] = _big(doc="packets moved since the previous collection")
    bytes: Mapped[int] = _big(doc="bytes moved since the previous collection")
    samples: Mapped[int] = _int(doc="sample rows written")
    duration_ms: Mapped[int] = _int(doc="how long recording took")
    rolled_up: Mapped[int] = mapped_column(
        SmallInteger, server_default=text("0"),
        doc="0: its hour is not yet in rollups; 1: counted; 2: counted without some "
            "samples (expired)")


class Address(Base):
    """Each distinct address once: text for people, binary for range scans."""

    __tablename__ = "addresses"
    __table_args__ = (UniqueConstraint("af", "bin"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    af: Mapped[int] = _small(doc="2 = IPv4, 24 = IPv6 (OpenBSD's values)")
    bin: Mapped[bytes] = mapped_column(LargeBinary, doc="4 bytes (IPv4) or 16, network order")
    text: Mapped[str] = mapped_column(Text, index=True, doc="as pfctl prints it")


class State(Base):
    """One PF state identity (creatorid, id) with every PFState field."""

    __tablename__ = "states"
    __table_args__ = (
        UniqueConstraint("creatorid", "state_id"),
        Index("ix_states_ended_before_at", "ended_before_at"),
        # The states that ended after a collection, by id: an hourly rollup reads those
        # (pfsync gives an end a packet's time, which no collection's time bounds).
        Index("ix_states_ended_before", "ended_before",
              sqlite_where=text("ended_before IS NOT NULL"),
              postgresql_where=text("ended_before IS NOT NULL")),
        Index("ix_states_rule", "rule"),
        Index("ix_states_ifname", "ifname"),
    )

    pk: Mapped[int] = mapped_column(STATE_PK, primary_key=True, autoincrement=False)
    creatorid: Mapped[int] = _big()
    state_id: Mapped[int] = _big(doc="PF's 64-bit id, as signed two's complement")
    ifname: Mapped[str] = mapped_column(Text)
    rule: Mapped[int] = _big(doc="4294967295 = none")
    anchor: Mapped[int] = _big()
    nat_rule: Mapped[int] = _big()
    proto: Mapped[int] = _small()
    direction: Mapped[int] = _small(doc="1 = in, 2 = out")
    af: Mapped[int] = _small()
    log: Mapped[int] = _small()
    rt: Mapped[int] = _small()
    rt_addr: Mapped[int | None] = _int(doc="addresses.id of the route-to next hop")
    rtableid0: Mapped[int] = _int()
    rtableid1: Mapped[int] = _int()
    max_mss: Mapped[int] = _int()
    min_ttl: Mapped[int] = _small()
    set_tos: Mapped[int] = _small()
    set_prio0: Mapped[int] = _small()
    set_prio1: Mapped[int] = _small()
    # current (last observed) values
    created_at: Mapped[int] = _big(doc="collection time minus the state's age")
    expires_at: Mapped[int] = _big(doc="collection time plus its expiry")
    packets0: Mapped[int] = _big()
    packets1: Mapped[int] = _big()
    bytes0: Mapped[int] = _big()
    bytes1: Mapped[int] = _big()
    timeout: Mapped[int] = _small()
    sync_flags: Mapped[int] = _small()
    updates: Mapped[int] = _small()
    state_flags: Mapped[int] = _int()
    dyn_hash: Mapped[int] = _big(doc="hash of the peers and counters, to see changes")
    peer_hash: Mapped[int | None] = _big(
        doc="hash of both peers alone, to rewrite them only when they change; "
            "NULL (unknown) in rows older than it")
    values_since: Mapped[int] = _int(doc="collection from which the current values hold")
    # lifetime
    first_seen: Mapped[int] = _int(doc="first collection that saw it")
    last_seen: Mapped[int | None] = _int(doc="last collection that saw it; NULL while open")
    last_seen_at: Mapped[int | None] = _big()
    ended_before: Mapped[int | None] = _int(doc="first collection that did not; NULL while open")
    ended_before_at: Mapped[int | None] = _big()
    ended_by: Mapped[int | None] = _small(
        doc="NULL: it ended between last_seen and ended_before (collections); 1: pfsync "
            "reported its removal at ended_before_at (= last_seen_at)")


class StateKey(Base):
    """The wire (side 0) and stack (side 1) key of a state, as exported."""

    __tablename__ = "state_keys"
    # Most states are not translated: their wire key repeats the stack key.
    # Only keys that say something new are indexed (mirror = 0), which
    # halves the index work and size; lookups add "mirror = 0".
    __table_args__ = tuple(
        Index(f"ix_state_keys_{col}", col, sqlite_where=text("mirror = 0"),
              postgresql_where=text("mirror = 0"))
        for col in ("addr0", "addr1", "port0", "port1")) + ({"sqlite_with_rowid": False},)

    state_pk: Mapped[int] = mapped_column(
        STATE_PK, ForeignKey("states.pk", ondelete="CASCADE"), primary_key=True)
    side: Mapped[int] = mapped_column(SmallInteger, primary_key=True,
                                      doc="0 = PF_SK_WIRE, 1 = PF_SK_STACK")
    af: Mapped[int] = _small()
    addr0: Mapped[int] = _int(doc="addresses.id")
    port0: Mapped[int] = _int()
    addr1: Mapped[int] = _int(doc="addresses.id")
    port1: Mapped[int] = _int()
    rdomain: Mapped[int] = _int()
    mirror: Mapped[int] = _small(doc="1: a wire key equal to the stack key (not indexed)")


def _peer_columns(prefix=""):
    """The 11 PFStatePeer columns (u32 fields as BIGINT)."""
    wide = ("seqlo", "seqhi", "seqdiff", "pfss_ts_mod")
    return [Column(prefix + name, BigInteger if name in wide else Integer, nullable=False)
            for name in PEER_FIELDS]


class StatePeer(Base):
    """The record's src (side 0) and dst (side 1) peer, current values."""

    __table__ = Table(
        "state_peers", Base.metadata,
        Column("state_pk", STATE_PK, ForeignKey("states.pk", ondelete="CASCADE"),
               primary_key=True),
        Column("side", SmallInteger, primary_key=True,
               doc="0 = the record's src, 1 = its dst"),
        *_peer_columns(),
        sqlite_with_rowid=False,
    )


class Sample(Base):
    """A state's earlier values, valid from one collection until another.

    The peers are kept apart (PeerSample), only when they changed: a third
    of the states of a busy table change their peers in a minute, all of
    them their counters.
    """

    __table__ = Table(
        "samples", Base.metadata,
        Column("state_pk", STATE_PK, ForeignKey("states.pk", ondelete="CASCADE"),
               nullable=False),
        Column("valid_until", Integer, nullable=False,
               doc="first collection with newer values"),
        Column("valid_from", Integer, nullable=False),
        Column("present", SmallInteger, nullable=False,
               doc="1: in those collections with these values; 0: absent from them"),
        *[Column(name, Integer if name in ("timeout", "sync_flags", "updates", "state_flags")
                 else BigInteger, nullable=False) for name in DYNAMIC_STATE_FIELDS],
        # By time first: a collection's samples are appended together and
        # expiry takes them from the front (migration 0008 says why).
        PrimaryKeyConstraint("valid_until", "state_pk"),
        # By state, on SQLite only the samples the primary key cannot find
        # (migration 0010): a sample that ends at the collection after c holds
        # c, and is found at (c + 1, state). Indexed are those that span more
        # than one collection, and absences. Most samples of a busy table last
        # one collection: they stay out of this index, which would otherwise
        # take a write at a random place for every changed state in every
        # collection. PostgreSQL keeps every sample here: its cascade from
        # states (enforced on every delete) finds a state's samples by it.
        Index("ix_samples_state_pk", "state_pk", "valid_until",
              sqlite_where=text(SAMPLE_INDEXED)),
        sqlite_with_rowid=False,
    )


class PeerSample(Base):
    """A state's earlier peers, in force until collection valid_until (the first
    with newer ones). The peers of a collection c are those of the state's first
    peer sample with valid_until > c, else its current state_peers; peers change
    only where values do, so a sample exists at every valid_until here."""

    __table__ = Table(
        "peer_samples", Base.metadata,
        Column("state_pk", STATE_PK, ForeignKey("states.pk", ondelete="CASCADE"),
               nullable=False),
        Column("valid_until", Integer, nullable=False,
               doc="first collection with newer peers"),
        *_peer_columns("src_"),
        *_peer_columns("dst_"),
        PrimaryKeyConstraint("valid_until", "state_pk"),
        Index("ix_peer_samples_state_pk", "state_pk", "valid_until"),
        sqlite_with_rowid=False,
    )


class Rollup(Base):
    """What moved in one complete UTC hour, by one dimension (dim) and its key.

    Reports read these instead of millions of states: a day of a
    100,000-state firewall is about 12 million states but a few hundred
    thousand rollup rows. Dimensions (pfhistory.rollup.DIMENSIONS): local
    host, remote host, service, rule, interface, translated address,
    published (rdr) service, initiating host, the hour's 25 largest states.
    Bytes and packets are what moved in the hour: for a host, out is what it
    sent; for the other dimensions, out is what initiators sent. states: the
    states first seen in the hour. The addresses rollups name are kept by prune.
    """

    __table__ = Table(
        "rollups", Base.metadata,
        Column("hour", BigInteger, primary_key=True,
               doc="UTC hour h (epoch s): collections in (h, h + 3600]"),
        Column("dim", SmallInteger, primary_key=True),
        Column("key", BigInteger, primary_key=True, doc="addresses.id, port, rule or pk"),
        Column("key2", BigInteger, primary_key=True,
               doc="protocol (service), anchor (rule), internal addresses.id (published); "
                   "else 0"),
        Column("label", Text, primary_key=True,
               doc="interface name; 'proto/public port/internal port' (published); else ''"),
        Column("states", Integer, nullable=False, doc="states first seen in the hour"),
        Column("halfopen", Integer, nullable=False,
               doc="of those, TCP states first seen before ESTABLISHED on either side"),
        Column("packets_out", BigInteger, nullable=False),
        Column("packets_in", BigInteger, nullable=False),
        Column("bytes_out", BigInteger, nullable=False),
        Column("bytes_in", BigInteger, nullable=False),
        sqlite_with_rowid=False,
    )


class RollupHour(Base):
    """An hour in rollups: the collections it counts, rolled up once, when complete."""

    __tablename__ = "rollup_hours"

    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False,
                                      doc="UTC hour h (epoch s), as rollups.hour")
    first_collection: Mapped[int] = _int(doc="its first collection (id)")
    last_collection: Mapped[int] = _int(doc="its last: collections are counted in id order")
    rolled_up: Mapped[int] = _small(doc="1: exact; 2: counted without expired samples")
    states: Mapped[int] = _int(doc="states whose values changed or that were new in the hour")
    duration_ms: Mapped[int] = _int(doc="how long rolling it up took")


class PartialState(Base):
    """A state pfsync spoke of only in compressed messages (UPD_C, DEL_C) before any full
    record: known by its identity, never given invented keys. Removed once a full record
    (INS, UPD) makes it a state."""

    __tablename__ = "partial_states"

    creatorid: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    state_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    first_at: Mapped[int] = _big(doc="first pfsync message about it (epoch s)")
    last_at: Mapped[int] = _big(doc="last one")
    ended_at: Mapped[int | None] = _big(doc="when pfsync reported its removal")
    updates: Mapped[int] = _int(doc="UPD_C messages received")
    timeout: Mapped[int | None] = _small(doc="PFTM_* of the last UPD_C")
    src_state: Mapped[int | None] = _small()
    dst_state: Mapped[int | None] = _small()


class Protocol(Base):
    """IP protocol names as OpenBSD's /etc/protocols gives them, for the views."""

    __tablename__ = "protocols"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(Text)


class Setting(Base):
    """Settings kept with the history (sample retention)."""

    __tablename__ = "settings"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text)
