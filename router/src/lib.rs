//! flotilla-router: range cache, leader routing, retries and the transactional client API.
//!
//! Dependencies point one way (bin → router → engine). [`cluster`] routes inside a node process
//! (for the RESP gateway); transactions come later (DESIGN.md §5).
//!
//! [`client`] is the native client: a separate process talks to the cluster over QUIC + TLS,
//! straight to each range's leader.
//!
//! [`resp`] is the Redis-protocol gateway every node serves (DESIGN.md §6); it reaches the
//! cluster only through its [`resp::KvBackend`] trait.

pub mod client;
pub mod cluster;
pub mod resp;
