//! `flotilla-bench`: see `flotilla-bench --help` and docs/BENCHMARKS.md.

use clap::Parser;

/// The same allocator as the `flotilla` binary: the harness shares the machine with the
/// systems it measures, so its own CPU per operation should be as small as it can be.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = flotilla_bench::cli::Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("bench").build()?;
    runtime.block_on(flotilla_bench::app::main(args))
}
