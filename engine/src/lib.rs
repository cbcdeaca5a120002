//! flotilla-engine: everything one node needs to host replicas (DESIGN.md §1–§3).
//!
//! - [`raft`]: the Raft algorithm as a deterministic, I/O-free state machine;
//! - [`sim`]: a seeded, deterministic simulator of Raft groups over a faulty network, with
//!   continuous safety and liveness checks;
//! - [`rng`]: the seeded generator both of them use.
//!
//! Storage (redb), the QUIC transport, the multi-Raft host and the range state machine arrive
//! with the node work, behind traits the simulator can replace.

pub mod bytes_serde;
pub mod ids;
pub mod kv;
pub mod node;
pub mod raft;
pub mod rng;
pub mod sim;
pub mod storage;
pub mod store;
pub mod transport;
