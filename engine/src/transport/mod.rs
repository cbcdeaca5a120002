//! Transport between nodes (placeholder until the QUIC transport lands).

pub mod wire;
