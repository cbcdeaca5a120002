//! The `flotilla` command line: `sim` runs the deterministic simulator, `demo` shows the system
//! working. Only argument parsing and printing live here; the work is in the library crates.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

mod admin;
mod demo;
mod start;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: allocation was a sixth of a node's CPU under writes
/// (glibc's arenas contend between the driver and the transport threads); see
/// docs/BENCHMARKS.md for the before and after.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use flotilla_engine::raft::PlantedBug;
use flotilla_engine::sim::{run_node_seed, run_seed, NodeSimOptions, SeedReport, SimOptions, Stats};

#[derive(Parser, Debug)]
#[command(
    name = "flotilla",
    version,
    about = "Flotilla: a sharded, replicated, transactional key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the deterministic Raft simulator over many seeds and check its invariants.
    Sim(SimArgs),
    /// Show Flotilla at work: a local 3-node cluster of real processes, narrated.
    Demo,
    /// Run one node of a cluster.
    Start(start::StartArgs),
    /// Make the certificates for mutual TLS between nodes.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Read and write keys through the native client (QUIC to any node's --listen address).
    #[command(subcommand)]
    Kv(KvCommand),
    /// Measure throughput and latency: the flotilla-bench harness (`flotilla bench --help`).
    #[command(disable_help_flag = true)]
    Bench {
        /// flotilla-bench's arguments, e.g. `-t flotilla://127.0.0.1:7000 -w a -d 10s`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Create the cluster CA (ca.pem, ca.key) in DIR.
    CreateCa {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Create a node certificate (node.pem, node.key, and a copy of ca.pem) signed by the CA.
    CreateNode {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca_dir: std::path::PathBuf,
        /// Directory to write the node's files to (pass it to `start --certs-dir`).
        #[arg(long)]
        out: std::path::PathBuf,
        /// The node's name (certificate common name).
        #[arg(long)]
        name: String,
        /// Subject alternative names: IP addresses and DNS names, comma-separated.
        #[arg(long, default_value = "127.0.0.1,localhost")]
        san: String,
    },
}

#[derive(clap::Args, Debug)]
struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed (seeds run are SEED, SEED+1, ...). Use with `--seeds 1` to replay one seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Initial voters per group: 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = parse_nodes)]
    nodes: usize,
    /// Raft groups hosted by the same simulated nodes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    groups: u64,
    /// Events per seed with faults active, before the final heal and liveness check.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    steps: u64,
    /// Plant a protocol bug to prove the checks catch it (testing only).
    #[arg(long, value_name = "NAME", value_parser = parse_bug)]
    inject_bug: Option<PlantedBug>,
    /// Keep going after a violation instead of stopping at the first.
    #[arg(long)]
    keep_going: bool,
    /// Worker threads (output is identical for any value).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: u64,
    /// Only print totals and violations, not one line per seed.
    #[arg(long)]
    quiet: bool,
    /// What to simulate: `raft` (Raft groups, the protocol) or `node` (whole nodes: the
    /// multi-Raft host with redb on a disk that loses unsynced writes; --groups is the number
    /// of ranges).
    #[arg(long, default_value = "raft", value_parser = ["raft", "node"])]
    level: String,
}

fn parse_nodes(s: &str) -> Result<usize, String> {
    match s {
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("--nodes must be 3 or 5, not {s:?}")),
    }
}

fn parse_bug(s: &str) -> Result<PlantedBug, String> {
    PlantedBug::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = PlantedBug::ALL.iter().map(|b| b.name()).collect();
        format!("unknown bug {s:?}; known: {}", names.join(", "))
    })
}

/// `flotilla bench ...`: the same harness as the `flotilla-bench` binary.
fn run_bench(args: Vec<String>) -> ExitCode {
    use clap::Parser as _;
    let args = match flotilla_bench::cli::Args::try_parse_from(
        std::iter::once("flotilla bench".to_string()).chain(args),
    ) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("bench").build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flotilla bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(flotilla_bench::app::main(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => sim(&args),
        Command::Demo => demo(),
        Command::Start(args) => match start::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flotilla start: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Kv(command) => run_kv(command),
        Command::Bench { args } => run_bench(args),
        Command::Cert(cert) => match run_cert(cert) {
            Ok(message) => {
                println!("{message}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("flotilla cert: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run_cert(cert: CertCommand) -> Result<String, flotilla_engine::transport::TransportError> {
    use flotilla_engine::transport::tls;
    match cert {
        CertCommand::CreateCa { dir } => {
            tls::create_ca(&dir)?;
            Ok(format!("cluster CA written to {} (keep ca.key secret)", dir.display()))
        }
        CertCommand::CreateNode { ca_dir, out, name, san } => {
            let sans: Vec<String> =
                san.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            tls::create_node_cert(&ca_dir, &out, &name, &sans)?;
            Ok(format!(
                "node certificate for {name} written to {} (use --certs-dir {})",
                out.display(),
                out.display()
            ))
        }
    }
}

fn sim(args: &SimArgs) -> ExitCode {
    let opts = SimOptions {
        nodes: args.nodes,
        groups: args.groups as usize,
        steps: args.steps,
        planted_bug: args.inject_bug,
        keep_trace: false,
    };
    let replay = |seed: u64| {
        let mut cmd = format!(
            "flotilla sim --level {} --seed {seed} --seeds 1 --nodes {} --groups {} --steps {}",
            args.level, args.nodes, args.groups, args.steps
        );
        if let Some(bug) = args.inject_bug {
            cmd.push_str(&format!(" --inject-bug {}", bug.name()));
        }
        cmd
    };
    let mut totals = Stats::default();
    let (mut ran, mut violations) = (0u64, 0u64);
    let stop = AtomicBool::new(false);
    let next = AtomicU64::new(0);
    let (tx, rx) = mpsc::channel::<(u64, SeedReport)>();
    let stdout = std::io::stdout();
    std::thread::scope(|scope| {
        for _ in 0..args.threads {
            let tx = tx.clone();
            let (stop, next, opts) = (&stop, &next, &opts);
            scope.spawn(move || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= args.seeds || stop.load(Ordering::Relaxed) {
                    break;
                }
                let seed = args.seed.wrapping_add(k);
                let report = if args.level == "node" {
                    let node_opts =
                        NodeSimOptions { nodes: opts.nodes, ranges: opts.groups as u32, steps: opts.steps };
                    run_node_seed(seed, &node_opts)
                } else {
                    run_seed(seed, opts)
                };
                if tx.send((k, report)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        // Print in seed order, whatever order the workers finish in.
        let mut pending = std::collections::BTreeMap::new();
        let mut expected = 0u64;
        for (k, report) in rx {
            pending.insert(k, report);
            while let Some(report) = pending.remove(&expected) {
                expected += 1;
                ran += 1;
                totals.add(&report.stats);
                let mut out = stdout.lock();
                if !args.quiet {
                    let _ = writeln!(out, "{}", report.summary_line());
                }
                if let Some(v) = &report.violation {
                    violations += 1;
                    let _ = writeln!(out, "VIOLATION seed {}: {}: {}", report.seed, v.invariant, v.detail);
                    let _ = writeln!(out, "trace (last events before the violation):");
                    for line in &report.trace {
                        let _ = writeln!(out, "  {line}");
                    }
                    let _ = writeln!(out, "replay: {}", replay(report.seed));
                    if !args.keep_going {
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
            if stop.load(Ordering::Relaxed) && !args.keep_going {
                break;
            }
        }
    });
    println!(
        "totals: seeds {ran} elections {} commits {} crashes {} partitions {} membership {} transfers {} snapshots {} reads {} messages {} violations {violations}",
        totals.elections,
        totals.commits,
        totals.crashes,
        totals.partitions,
        totals.membership_changes,
        totals.transfers,
        totals.snapshots,
        totals.reads,
        totals.messages,
    );
    if violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn demo() -> ExitCode {
    match demo::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// Print the value of KEY, or (nil).
    Get {
        key: String,
        #[command(flatten)]
        connect: KvConnect,
    },
    /// Set KEY to VALUE.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        connect: KvConnect,
    },
    /// Delete KEY; prints 1 if it existed, else 0.
    Del {
        key: String,
        #[command(flatten)]
        connect: KvConnect,
    },
    /// Print KEY<TAB>VALUE lines for START <= key < END (no END: to the last key).
    Scan {
        #[arg(default_value = "")]
        start: String,
        end: Option<String>,
        /// At most this many pairs.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        connect: KvConnect,
    },
}

#[derive(clap::Args, Debug)]
struct KvConnect {
    /// Any node's --listen address (HOST:PORT); comma-separate several to try in turn.
    #[arg(long, required = true, value_delimiter = ',')]
    host: Vec<String>,
    /// The cluster runs with --insecure.
    #[arg(long)]
    insecure: bool,
    /// Mutual TLS: a directory with ca.pem and a CA-signed node.pem/node.key (a node's works).
    #[arg(long)]
    certs_dir: Option<std::path::PathBuf>,
    #[arg(long, default_value = flotilla_router::client::DEFAULT_CLUSTER_ID)]
    cluster_id: String,
    /// Give up on the operation after this long (retries included).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

fn run_kv(command: KvCommand) -> ExitCode {
    use flotilla_router::client::{Client, ClientOptions};
    let result = (|| -> anyhow::Result<Vec<u8>> {
        let connect = match &command {
            KvCommand::Get { connect, .. }
            | KvCommand::Put { connect, .. }
            | KvCommand::Del { connect, .. }
            | KvCommand::Scan { connect, .. } => connect,
        };
        let mut addrs = Vec::new();
        for host in &connect.host {
            use std::net::ToSocketAddrs;
            let resolved =
                host.trim().to_socket_addrs().map_err(|e| anyhow::anyhow!("--host {host:?}: {e}"))?;
            addrs.extend(resolved);
        }
        let opts = match (connect.insecure, &connect.certs_dir) {
            (true, None) => ClientOptions::insecure(),
            (false, Some(dir)) => ClientOptions::with_certs(dir),
            (true, Some(_)) => anyhow::bail!("choose one of --insecure and --certs-dir"),
            (false, None) => anyhow::bail!("one of --insecure or --certs-dir DIR is required"),
        }
        .cluster_id(connect.cluster_id.clone())
        .request_timeout(std::time::Duration::from_millis(connect.timeout_ms.max(1)));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let client = Client::connect(&addrs, opts).await?;
            let mut out = Vec::new();
            match &command {
                KvCommand::Get { key, .. } => match client.get(key.as_bytes()).await? {
                    Some(value) => out.extend(value),
                    None => out.extend(b"(nil)"),
                },
                KvCommand::Put { key, value, .. } => {
                    client.put(key.as_bytes(), value.as_bytes()).await?;
                    out.extend(b"OK");
                }
                KvCommand::Del { key, .. } => {
                    out.extend(if client.delete(key.as_bytes()).await? { b"1" } else { b"0" })
                }
                KvCommand::Scan { start, end, limit, .. } => {
                    let end = end.as_deref().unwrap_or("");
                    for (i, (key, value)) in
                        client.scan(start.as_bytes(), end.as_bytes(), *limit).await?.into_iter().enumerate()
                    {
                        if i > 0 {
                            out.push(b'\n');
                        }
                        out.extend(key);
                        out.push(b'\t');
                        out.extend(value);
                    }
                }
            }
            client.close();
            Ok(out)
        })
    })();
    match result {
        Ok(mut out) => {
            if !out.is_empty() {
                out.push(b'\n');
            }
            let _ = std::io::stdout().write_all(&out);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flotilla kv: {e:#}");
            ExitCode::FAILURE
        }
    }
}
