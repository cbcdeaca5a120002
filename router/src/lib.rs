//! flotilla-router: range cache, leader routing, retries and the transactional client API.
//!
//! Empty until the node and transactions work lands (DESIGN.md §5); the crate exists now so the
//! workspace shows the architecture and dependencies point one way (bin → router → engine).
//!
//! [`resp`] is the Redis-protocol gateway every node serves (DESIGN.md §6); it reaches the
//! cluster only through its [`resp::KvBackend`] trait.

pub mod cluster;
pub mod resp;
