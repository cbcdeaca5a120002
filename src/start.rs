//! `flotilla start`: run one node. Flags or `--config node.toml` (flags win); every value is
//! validated with a message that names the setting.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use flotilla_engine::ids::RangeId;
use flotilla_engine::node::{Node, NodeConfig};
use flotilla_engine::raft::NodeId;
use flotilla_engine::store::StoreConfig;
use flotilla_engine::transport::TlsMode;
use flotilla_router::cluster::ClusterBackend;
use serde::Deserialize;

use crate::admin::{self, AdminSource};

/// Ranges a new cluster may be split into at most.
const INITIAL_RANGES_MAX: u32 = 100_000;

#[derive(clap::Args, Debug, Default)]
pub struct StartArgs {
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long)]
    pub id: Option<u64>,
    /// Directory for this node's data (created if missing).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// QUIC address for peers and native clients (HOST:PORT); bound exactly.
    #[arg(long)]
    pub listen: Option<String>,
    /// RESP (Redis protocol) address (HOST:PORT).
    #[arg(long)]
    pub resp: Option<String>,
    /// Admin HTTP address for /metrics and /status (HOST:PORT).
    #[arg(long)]
    pub http: Option<String>,
    /// The initial cluster's --listen addresses, comma-separated. The i-th address belongs to
    /// node i (1-based) unless written ID=HOST:PORT.
    #[arg(long)]
    pub join: Option<String>,
    /// Labels such as region=eu,zone=a (used by placement, later).
    #[arg(long)]
    pub labels: Option<String>,
    /// Plain-text development mode: TLS with throwaway certificates, no peer authentication.
    #[arg(long)]
    pub insecure: bool,
    /// Directory with ca.pem, node.pem and node.key (from `flotilla cert`).
    #[arg(long)]
    pub certs_dir: Option<PathBuf>,
    /// Split a new cluster's keyspace into this many ranges.
    #[arg(long)]
    pub initial_ranges: Option<u32>,
    /// Threads for network I/O (QUIC, RESP, HTTP); the Raft driver has its own thread.
    /// 0: one thread for everything, the driver included (its fsyncs of busy rounds on a
    /// helper thread) — the fewest thread wake-ups. Default: 0 on machines with 2 cores or
    /// fewer, 2 on larger ones.
    #[arg(long)]
    pub io_threads: Option<usize>,
    /// Read settings from a TOML file; flags given on the command line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `--io-threads` when not given: on a small machine, every thread wake-up between a node's
/// network and its driver costs more than the parallelism gains (docs/BENCHMARKS.md).
fn default_io_threads() -> usize {
    match std::thread::available_parallelism() {
        Ok(cores) if cores.get() <= 2 => 0,
        _ => 2,
    }
}

/// Network I/O threads at most.
const IO_THREADS_MAX: usize = 64;

/// The TOML form of the same settings; unknown keys are rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    resp: Option<String>,
    http: Option<String>,
    join: Option<Vec<String>>,
    labels: Option<BTreeMap<String, String>>,
    insecure: Option<bool>,
    certs_dir: Option<PathBuf>,
    initial_ranges: Option<u32>,
    io_threads: Option<usize>,
    tick_ms: Option<u64>,
    /// `false` keeps idle groups ticking and heartbeating (for measurements).
    quiesce: Option<bool>,
}

/// Everything validated.
#[derive(Debug)]
pub struct Settings {
    pub node: NodeConfig,
    pub resp: SocketAddr,
    pub http: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub io_threads: usize,
}

fn parse_addr(what: &str, text: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let mut addrs = text.to_socket_addrs().with_context(|| format!("{what}: {text:?} is not HOST:PORT"))?;
    addrs.next().with_context(|| format!("{what}: {text:?} resolves to no address"))
}

fn parse_join(entries: &[String]) -> anyhow::Result<Vec<(NodeId, SocketAddr)>> {
    let mut members = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let (id, addr) = match entry.split_once('=') {
            Some((id, addr)) => {
                let id: u64 =
                    id.trim().parse().with_context(|| format!("--join: bad node id in {entry:?}"))?;
                (id, addr)
            }
            None => (i as u64 + 1, entry),
        };
        if id == 0 {
            bail!("--join: node id 0 is reserved ({entry:?})");
        }
        members.push((NodeId(id), parse_addr("--join", addr)?));
    }
    let mut ids: Vec<NodeId> = members.iter().map(|m| m.0).collect();
    ids.sort();
    ids.dedup();
    if ids.len() != members.len() {
        bail!("--join: a node id appears twice");
    }
    let mut addrs: Vec<SocketAddr> = members.iter().map(|m| m.1).collect();
    addrs.sort();
    addrs.dedup();
    if addrs.len() != members.len() {
        bail!("--join: an address appears twice");
    }
    if members.is_empty() {
        bail!("--join: the initial cluster needs at least one member");
    }
    Ok(members)
}

fn parse_labels(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair.split_once('=').with_context(|| format!("--labels: {pair:?} is not KEY=VALUE"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty()
            || v.is_empty()
            || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("--labels: {pair:?} needs a non-empty KEY (letters, digits, _ and -) and VALUE");
        }
        labels.insert(k.to_string(), v.to_string());
    }
    Ok(labels)
}

impl StartArgs {
    pub fn settings(self) -> anyhow::Result<Settings> {
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("{} is not a valid node config", path.display()))?
            }
            None => FileConfig::default(),
        };
        let id = self.id.or(file.id).context("--id is required")?;
        if id == 0 {
            bail!("--id must be a positive integer");
        }
        let data_dir = self.data_dir.or(file.data_dir).context("--data-dir is required")?;
        let listen = parse_addr("--listen", &self.listen.or(file.listen).context("--listen is required")?)?;
        let resp = parse_addr("--resp", &self.resp.or(file.resp).context("--resp is required")?)?;
        let http = parse_addr("--http", &self.http.or(file.http).context("--http is required")?)?;
        let join: Vec<String> = match self.join {
            Some(text) => text.split(',').map(str::to_string).collect(),
            None => file.join.context("--join is required (the initial cluster's --listen addresses)")?,
        };
        let members = parse_join(&join)?;
        let labels = match self.labels {
            Some(text) => parse_labels(&text)?,
            None => file.labels.unwrap_or_default(),
        };
        let insecure = self.insecure || file.insecure.unwrap_or(false);
        let certs_dir = self.certs_dir.or(file.certs_dir);
        let tls = match (insecure, certs_dir) {
            (true, None) => TlsMode::Insecure,
            (false, Some(dir)) => TlsMode::Certs { dir },
            (true, Some(_)) => bail!("choose one of --insecure and --certs-dir"),
            (false, None) => {
                bail!("one of --insecure (development) or --certs-dir DIR (mutual TLS) is required")
            }
        };
        let initial_ranges = self.initial_ranges.or(file.initial_ranges).unwrap_or(1);
        if initial_ranges == 0 || initial_ranges > INITIAL_RANGES_MAX {
            bail!("--initial-ranges must be between 1 and {INITIAL_RANGES_MAX}");
        }
        let io_threads = self.io_threads.or(file.io_threads).unwrap_or_else(default_io_threads);
        if io_threads > IO_THREADS_MAX {
            bail!("--io-threads must be between 0 and {IO_THREADS_MAX}");
        }
        let mut store = StoreConfig::new(NodeId(id));
        if let Some(ms) = file.tick_ms {
            if !(1..=1_000).contains(&ms) {
                bail!("tick_ms must be between 1 and 1000");
            }
            store.tick_interval = Duration::from_millis(ms);
        }
        if file.quiesce == Some(false) {
            store.quiesce_idle_ticks = u32::MAX;
        }
        // Fault-injection tests only: this node's clock runs fast or slow.
        if let Ok(text) = std::env::var("FLOTILLA_TEST_CLOCK_RATE") {
            let rate: f64 = text
                .parse()
                .map_err(|_| anyhow::anyhow!("FLOTILLA_TEST_CLOCK_RATE={text:?} is not a number"))?;
            if !(0.1..=10.0).contains(&rate) {
                bail!("FLOTILLA_TEST_CLOCK_RATE must be between 0.1 and 10, got {rate}");
            }
            eprintln!("WARNING: FLOTILLA_TEST_CLOCK_RATE={rate}: this node's clock is skewed (testing only)");
            store.clock_rate = rate;
        }
        if let Ok(text) = std::env::var("FLOTILLA_TEST_LOSE_UNSYNCED") {
            if text != "1" {
                bail!("FLOTILLA_TEST_LOSE_UNSYNCED must be 1 or unset, got {text:?}");
            }
            eprintln!(
                "WARNING: FLOTILLA_TEST_LOSE_UNSYNCED=1: unsynced writes live in memory (testing only)"
            );
            store.lose_unsynced_writes = true;
        }
        for (what, addr) in [("--resp", resp), ("--http", http)] {
            if addr == listen {
                bail!("{what} must differ from --listen ({listen})");
            }
        }
        let node = NodeConfig {
            id: NodeId(id),
            data_dir,
            listen,
            members,
            tls,
            cluster_id: "flotilla".into(),
            initial_ranges,
            store,
            single_thread: io_threads == 0,
        };
        Ok(Settings { node, resp, http, labels, io_threads })
    }
}

struct Admin {
    node: Arc<Node>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    labels: BTreeMap<String, String>,
}

impl AdminSource for Admin {
    fn status_json(&self) -> String {
        let status = self.node.store.status();
        let peers: Vec<serde_json::Value> = self
            .node
            .members
            .iter()
            .filter(|(id, _)| *id != self.node.id)
            .map(|(id, addr)| serde_json::json!({"id": id.0, "addr": addr.to_string()}))
            .collect();
        serde_json::json!({
            "node_id": self.node.id.0,
            "listen": self.node.listen.to_string(),
            "labels": self.labels,
            "peers": peers,
            "fatal": status.fatal,
            "ranges": status.ranges,
        })
        .to_string()
    }

    fn metrics_text(&self) -> String {
        self.prometheus.render()
    }

    fn digest_json(&self) -> admin::BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let digests = self.node.store.digests().await.map_err(|e| e.to_string())?;
            let ranges: Vec<serde_json::Value> = digests
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "id": d.range.0,
                        "applied": d.applied.0,
                        "keys": d.keys,
                        "hash": format!("{:016x}", d.hash),
                    })
                })
                .collect();
            Ok(serde_json::json!({"node_id": self.node.id.0, "ranges": ranges}).to_string())
        })
    }

    fn transfer_leader(&self, range: u64, to: u64) -> admin::BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let range = RangeId(range);
            let to = NodeId(to);
            let desc = self.node.store.ranges().iter().find(|r| r.id == range).cloned();
            let Some(desc) = desc else { return Err(format!("{range} is not hosted on this node")) };
            if !desc.replicas.contains(&to) {
                return Err(format!("{to} holds no replica of {range}"));
            }
            if self.node.store.leader_of(range) != Some(self.node.id) {
                return Err(format!(
                    "this node does not lead {range} (leader: {:?}); ask the leader",
                    self.node.store.leader_of(range).map(|n| n.0)
                ));
            }
            self.node.store.transfer_leader(range, to).await.map_err(|e| e.to_string())?;
            Ok(format!("asked {range} to transfer its leadership to {to}"))
        })
    }
}

/// Runs the node until it is killed or fails.
pub fn run(args: StartArgs) -> anyhow::Result<()> {
    let settings = args.settings()?;
    let _ = tracing_subscriber::fmt().with_target(false).with_writer(std::io::stderr).try_init();
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let runtime = if settings.io_threads == 0 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(settings.io_threads).enable_all().build()
    }
    .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Bind the client-facing ports first, so a port clash is reported before any state moves.
        let resp_listener = tokio::net::TcpListener::bind(settings.resp)
            .await
            .with_context(|| format!("cannot bind --resp {}", settings.resp))?;
        let http_listener = admin::bind(settings.http).await?;
        let id = settings.node.id;
        let node = Arc::new(Node::start(settings.node).await.context("cannot start the node")?);
        tracing::info!(node = id.0, listen = %node.listen, "node started");
        eprintln!(
            "flotilla node {} listening: peers {} resp {} http {}",
            id.0, node.listen, settings.resp, settings.http
        );
        let admin = Arc::new(Admin { node: node.clone(), prometheus, labels: settings.labels });
        tokio::spawn(admin::serve(http_listener, admin));
        let backend = Arc::new(ClusterBackend::new(node.clone()));
        let watch = node.clone();
        let fatal = async move {
            // Stop when the driver reports a fatal storage failure, or is gone without one.
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(reason) = watch.store.fatal() {
                    return reason;
                }
                if watch.store.driver_stopped() {
                    return "the Raft driver stopped unexpectedly (its panic is printed above)".to_string();
                }
            }
        };
        tokio::select! {
            served = flotilla_router::resp::serve(resp_listener, backend, std::future::pending::<()>()) => {
                served.context("the RESP gateway stopped")?;
                Ok(())
            }
            reason = fatal => bail!("node stopped: {reason}"),
        }
    })
}
