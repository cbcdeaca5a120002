//! flotilla-router: range cache, leader routing, retries and the transactional client API.
//!
//! Empty until the node and transactions work lands (DESIGN.md §5); the crate exists now so the
//! workspace shows the architecture and dependencies point one way (bin → router → engine).
