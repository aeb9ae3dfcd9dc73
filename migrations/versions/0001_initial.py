"""Initial schema: collections, addresses, states, their keys, peers and samples.

Revision ID: 0001
Revises: 
Create Date: 2026-11-28 13:25:59.568512
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('addresses',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('af', sa.SmallInteger(), nullable=False),
    sa.Column('bin', sa.LargeBinary(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_addresses')),
    sa.UniqueConstraint('af', 'bin', name=op.f('uq_addresses_af_bin'))
    )
    with op.batch_alter_table('addresses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_addresses_text'), ['text'], unique=False)

    op.create_table('collections',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('collected_at', sa.BigInteger(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('host', sa.Text(), nullable=False),
    sa.Column('creatorid', sa.BigInteger(), nullable=True),
    sa.Column('states', sa.Integer(), nullable=False),
    sa.Column('inserted', sa.Integer(), nullable=False),
    sa.Column('updated', sa.Integer(), nullable=False),
    sa.Column('reopened', sa.Integer(), nullable=False),
    sa.Column('closed', sa.Integer(), nullable=False),
    sa.Column('packets', sa.BigInteger(), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_collections'))
    )
    with op.batch_alter_table('collections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_collections_collected_at'), ['collected_at'], unique=False)

    op.create_table('settings',
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_settings'))
    )
    op.create_table('states',
    sa.Column('pk', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('creatorid', sa.BigInteger(), nullable=False),
    sa.Column('state_id', sa.BigInteger(), nullable=False),
    sa.Column('ifname', sa.Text(), nullable=False),
    sa.Column('rule', sa.BigInteger(), nullable=False),
    sa.Column('anchor', sa.BigInteger(), nullable=False),
    sa.Column('nat_rule', sa.BigInteger(), nullable=False),
    sa.Column('proto', sa.SmallInteger(), nullable=False),
    sa.Column('direction', sa.SmallInteger(), nullable=False),
    sa.Column('af', sa.SmallInteger(), nullable=False),
    sa.Column('log', sa.SmallInteger(), nullable=False),
    sa.Column('rt', sa.SmallInteger(), nullable=False),
    sa.Column('rt_addr', sa.Integer(), nullable=True),
    sa.Column('rtableid0', sa.Integer(), nullable=False),
    sa.Column('rtableid1', sa.Integer(), nullable=False),
    sa.Column('max_mss', sa.Integer(), nullable=False),
    sa.Column('min_ttl', sa.SmallInteger(), nullable=False),
    sa.Column('set_tos', sa.SmallInteger(), nullable=False),
    sa.Column('set_prio0', sa.SmallInteger(), nullable=False),
    sa.Column('set_prio1', sa.SmallInteger(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('packets0', sa.BigInteger(), nullable=False),
    sa.Column('packets1', sa.BigInteger(), nullable=False),
    sa.Column('bytes0', sa.BigInteger(), nullable=False),
    sa.Column('bytes1', sa.BigInteger(), nullable=False),
    sa.Column('timeout', sa.SmallInteger(), nullable=False),
    sa.Column('sync_flags', sa.SmallInteger(), nullable=False),
    sa.Column('updates', sa.SmallInteger(), nullable=False),
    sa.Column('state_flags', sa.Integer(), nullable=False),
    sa.Column('dyn_hash', sa.BigInteger(), nullable=False),
    sa.Column('values_since', sa.Integer(), nullable=False),
    sa.Column('first_seen', sa.Integer(), nullable=False),
    sa.Column('last_seen', sa.Integer(), nullable=True),
    sa.Column('last_seen_at', sa.BigInteger(), nullable=True),
    sa.Column('ended_before', sa.Integer(), nullable=True),
    sa.Column('ended_before_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('pk', name=op.f('pk_states')),
    sa.UniqueConstraint('creatorid', 'state_id', name=op.f('uq_states_creatorid_state_id'))
    )
    with op.batch_alter_table('states', schema=None) as batch_op:
        batch_op.create_index('ix_states_ended_before_at', ['ended_before_at'], unique=False)
        batch_op.create_index('ix_states_ifname', ['ifname'], unique=False)
        batch_op.create_index('ix_states_rule', ['rule'], unique=False)

    op.create_table('samples',
    sa.Column('state_pk', sa.Integer(), nullable=False),
    sa.Column('valid_until', sa.Integer(), nullable=False),
    sa.Column('valid_from', sa.Integer(), nullable=False),
    sa.Column('present', sa.SmallInteger(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('packets0', sa.BigInteger(), nullable=False),
    sa.Column('packets1', sa.BigInteger(), nullable=False),
    sa.Column('bytes0', sa.BigInteger(), nullable=False),
    sa.Column('bytes1', sa.BigInteger(), nullable=False),
    sa.Column('timeout', sa.Integer(), nullable=False),
    sa.Column('sync_flags', sa.Integer(), nullable=False),
    sa.Column('updates', sa.Integer(), nullable=False),
    sa.Column('state_flags', sa.Integer(), nullable=False),
    sa.Column('src_seqlo', sa.BigInteger(), nullable=False),
    sa.Column('src_seqhi', sa.BigInteger(), nullable=False),
    sa.Column('src_seqdiff', sa.BigInteger(), nullable=False),
    sa.Column('src_max_win', sa.Integer(), nullable=False),
    sa.Column('src_mss', sa.Integer(), nullable=False),
    sa.Column('src_state', sa.Integer(), nullable=False),
    sa.Column('src_wscale', sa.Integer(), nullable=False),
    sa.Column('src_pfss_flags', sa.Integer(), nullable=False),
    sa.Column('src_pfss_ttl', sa.Integer(), nullable=False),
    sa.Column('src_scrub_flag', sa.Integer(), nullable=False),
    sa.Column('src_pfss_ts_mod', sa.BigInteger(), nullable=False),
    sa.Column('dst_seqlo', sa.BigInteger(), nullable=False),
    sa.Column('dst_seqhi', sa.BigInteger(), nullable=False),
    sa.Column('dst_seqdiff', sa.BigInteger(), nullable=False),
    sa.Column('dst_max_win', sa.Integer(), nullable=False),
    sa.Column('dst_mss', sa.Integer(), nullable=False),
    sa.Column('dst_state', sa.Integer(), nullable=False),
    sa.Column('dst_wscale', sa.Integer(), nullable=False),
    sa.Column('dst_pfss_flags', sa.Integer(), nullable=False),
    sa.Column('dst_pfss_ttl', sa.Integer(), nullable=False),
    sa.Column('dst_scrub_flag', sa.Integer(), nullable=False),
    sa.Column('dst_pfss_ts_mod', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['state_pk'], ['states.pk'], name=op.f('fk_samples_state_pk_states'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('state_pk', 'valid_until', name=op.f('pk_samples')),
    sqlite_with_rowid=False
    )
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.create_index('ix_samples_valid_until', ['valid_until'], unique=False)

    op.create_table('state_keys',
    sa.Column('state_pk', sa.Integer(), nullable=False),
    sa.Column('side', sa.SmallInteger(), nullable=False),
    sa.Column('af', sa.SmallInteger(), nullable=False),
    sa.Column('addr0', sa.Integer(), nullable=False),
    sa.Column('port0', sa.Integer(), nullable=False),
    sa.Column('addr1', sa.Integer(), nullable=False),
    sa.Column('port1', sa.Integer(), nullable=False),
    sa.Column('rdomain', sa.Integer(), nullable=False),
    sa.Column('mirror', sa.SmallInteger(), nullable=False),
    sa.ForeignKeyConstraint(['state_pk'], ['states.pk'], name=op.f('fk_state_keys_state_pk_states'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('state_pk', 'side', name=op.f('pk_state_keys')),
    sqlite_with_rowid=False
    )
    with op.batch_alter_table('state_keys', schema=None) as batch_op:
        batch_op.create_index('ix_state_keys_addr0', ['addr0'], unique=False, sqlite_where=sa.text('mirror = 0'), postgresql_where=sa.text('mirror = 0'))
        batch_op.create_index('ix_state_keys_addr1', ['addr1'], unique=False, sqlite_where=sa.text('mirror = 0'), postgresql_where=sa.text('mirror = 0'))
        batch_op.create_index('ix_state_keys_port0', ['port0'], unique=False, sqlite_where=sa.text('mirror = 0'), postgresql_where=sa.text('mirror = 0'))
        batch_op.create_index('ix_state_keys_port1', ['port1'], unique=False, sqlite_where=sa.text('mirror = 0'), postgresql_where=sa.text('mirror = 0'))

    op.create_table('state_peers',
    sa.Column('state_pk', sa.Integer(), nullable=False),
    sa.Column('side', sa.SmallInteger(), nullable=False),
    sa.Column('seqlo', sa.BigInteger(), nullable=False),
    sa.Column('seqhi', sa.BigInteger(), nullable=False),
    sa.Column('seqdiff', sa.BigInteger(), nullable=False),
    sa.Column('max_win', sa.Integer(), nullable=False),
    sa.Column('mss', sa.Integer(), nullable=False),
    sa.Column('state', sa.Integer(), nullable=False),
    sa.Column('wscale', sa.Integer(), nullable=False),
    sa.Column('pfss_flags', sa.Integer(), nullable=False),
    sa.Column('pfss_ttl', sa.Integer(), nullable=False),
    sa.Column('scrub_flag', sa.Integer(), nullable=False),
    sa.Column('pfss_ts_mod', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['state_pk'], ['states.pk'], name=op.f('fk_state_peers_state_pk_states'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('state_pk', 'side', name=op.f('pk_state_peers')),
    sqlite_with_rowid=False
    )


def downgrade():
    op.drop_table('state_peers')
    with op.batch_alter_table('state_keys', schema=None) as batch_op:
        batch_op.drop_index('ix_state_keys_port1')
        batch_op.drop_index('ix_state_keys_port0')
        batch_op.drop_index('ix_state_keys_addr1')
        batch_op.drop_index('ix_state_keys_addr0')

    op.drop_table('state_keys')
    with op.batch_alter_table('samples', schema=None) as batch_op:
        batch_op.drop_index('ix_samples_valid_until')

    op.drop_table('samples')
    with op.batch_alter_table('states', schema=None) as batch_op:
        batch_op.drop_index('ix_states_rule')
        batch_op.drop_index('ix_states_ifname')
        batch_op.drop_index('ix_states_ended_before_at')

    op.drop_table('states')
    op.drop_table('settings')
    with op.batch_alter_table('collections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_collections_collected_at'))

    op.drop_table('collections')
    with op.batch_alter_table('addresses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_addresses_text'))

    op.drop_table('addresses')
