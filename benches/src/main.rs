//! `flotilla-bench`: see `flotilla-bench --help` and docs/BENCHMARKS.md.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = flotilla_bench::cli::Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("bench").build()?;
    runtime.block_on(flotilla_bench::app::main(args))
}
