//! flotilla-bench: the throughput and latency harness (DESIGN.md §8).
//!
//! The harness needs a real node to measure; it lands with the bench issue. Until then the
//! binary says so and exits non-zero instead of printing figures it did not measure.

fn main() -> anyhow::Result<()> {
    anyhow::bail!(
        "flotilla-bench: no harness yet — it needs the real node (redb + QUIC); \
         run `flotilla sim` to exercise the Raft core meanwhile"
    )
}
