"""The Kademlia DHT's sans-I/O core: messages, keys, routing table, lookups, record store."""

from p2pnode.wire.kad.keys import (
    Key,
    common_prefix_length,
    is_multihash,
    kad_key,
    kad_key_for_peer,
    pk_record_key,
    provider_key_for_kind,
    xor_distance,
)
from p2pnode.wire.kad.lookup import Lookup, LookupResult
from p2pnode.wire.kad.messages import (
    MAX_MESSAGE_SIZE,
    PROTOCOL_ID,
    ConnectionType,
    Message,
    MessageReader,
    MessageType,
    PeerInfo,
    Record,
    decode_message,
    encode_message,
    fit_for_sending,
    frame_message,
)
from p2pnode.wire.kad.store import (
    ProviderStore,
    accept_provider,
    check_provider_key,
    validate_pk_record,
)
from p2pnode.wire.kad.table import AddResult, AddStatus, RoutingTable

__all__ = [
    "MAX_MESSAGE_SIZE",
    "PROTOCOL_ID",
    "AddResult",
    "AddStatus",
    "ConnectionType",
    "Key",
    "Lookup",
    "LookupResult",
    "Message",
    "MessageReader",
    "MessageType",
    "PeerInfo",
    "ProviderStore",
    "Record",
    "RoutingTable",
    "accept_provider",
    "check_provider_key",
    "common_prefix_length",
    "decode_message",
    "encode_message",
    "fit_for_sending",
    "frame_message",
    "is_multihash",
    "kad_key",
    "kad_key_for_peer",
    "pk_record_key",
    "provider_key_for_kind",
    "validate_pk_record",
    "xor_distance",
]
