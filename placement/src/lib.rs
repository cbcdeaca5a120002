//! flotilla-placement: the cluster-metadata state machine (group 0), scheduler, TSO and policies.
//!
//! Empty until the placement work lands (DESIGN.md §4); the crate exists now so the workspace
//! shows the architecture and dependencies point one way (bin → placement → engine).
