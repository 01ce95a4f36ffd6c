//! The Raft type configuration: what the log carries and what applying it returns.

use std::io::Cursor;

use cella_proto::cella::core::v1 as corepb;
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Cella's consistent core as an openraft application.
    pub TypeConfig:
        D = Batch,
        R = Applied,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A member id.
pub type NodeId = u64;
/// A log entry of the core.
pub type Entry = openraft::Entry<TypeConfig>;
/// A Raft log position.
pub type LogId = openraft::LogId<NodeId>;
/// The core's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// Replicated writes proposed together; stored in the log as their protobuf encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch(#[serde(with = "prost_bytes")] pub corepb::CommandBatch);

/// The results of applying one entry, one per command (none for blank and membership entries).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied(#[serde(with = "prost_bytes")] pub corepb::BatchResult);

/// Serde for prost messages as their protobuf bytes, so log and wire stay protobuf inside.
mod prost_bytes {
    use prost::Message;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<M: Message, S: Serializer>(msg: &M, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&msg.encode_to_vec())
    }

    pub fn deserialize<'de, M: Message + Default, D: Deserializer<'de>>(
        d: D,
    ) -> Result<M, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        M::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
    }
}
