//! hostpulse wire schema, the one source of truth for what crosses the wire.
//!
//! # Layout
//! - [`v1`]: the gRPC ingest service generated from `proto/ingest.proto`
//!   (client and server), agent → aggregator.
//! - [`payload`]: the MessagePack sample payload carried inside a `Batch`,
//!   with encode/decode helpers and validation.
//!
//! This crate holds no logic beyond conversions and checks of the schema itself.

pub mod payload;

/// Generated code for package `hostpulse.v1` (service `Ingest`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("hostpulse.v1");
}

pub use payload::{
    Cpu, DecodeError, Disk, DiskDevice, Filesystem, Filesystems, Interface, Load, MAX_NAME_BYTES,
    MAX_PER_CORE, MAX_TOP_PROCESSES, Memory, Network, Process, ProcessRollup, Processes,
    SCHEMA_VERSION, Sample, Sensor, SystemInfo, Temperatures, decode_batch, encode_batch,
    encode_sample, join_samples, read_batch,
};

/// Most bytes the `AgentMessage` carrying a `Batch` adds around its samples
/// (field tags, the seq, the count and two lengths), so a sender can keep
/// whole messages under the aggregator's `Welcome.max_message_bytes`.
pub const BATCH_FRAMING_MAX: usize = 32;
