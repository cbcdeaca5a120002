//! flotilla-bench: the throughput and latency harness (DESIGN.md §8).
//!
//! One harness measures every system the same way: a [`target::Target`] (Flotilla's native
//! client, RESP — Flotilla's gateway or Redis — or etcd) runs a [`workload::Workload`] (YCSB
//! A–F, kv0, kv95, ...) from N clients in closed or open loop ([`run`]); the figures (ops/s,
//! latency percentiles from an HDR histogram, server CPU and disk bytes per op from /proc) go
//! to a table, JSON and a hand-written SVG ([`report`], [`svg`]). `failover` and `idle-ranges`
//! are in [`scenario`].

pub mod admin;
pub mod app;
pub mod cli;
pub mod dist;
pub mod procfs;
pub mod report;
pub mod run;
pub mod scenario;
pub mod svg;
pub mod target;
pub mod workload;
