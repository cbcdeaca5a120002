//! The native client: a separate process talks to the cluster over QUIC + TLS, straight to the
//! leader of each key's range (DESIGN.md §5, §6).
//!
//! ```no_run
//! # async fn demo() -> Result<(), flotilla_router::client::ClientError> {
//! use flotilla_router::client::{Client, ClientOptions};
//! let addr = "127.0.0.1:7000".parse().unwrap();
//! let client = Client::connect(&[addr], ClientOptions::insecure()).await?;
//! client.put(b"k", b"v").await?;
//! assert_eq!(client.get(b"k").await?, Some(b"v".to_vec()));
//! # Ok(()) }
//! ```
//!
//! How it routes: `connect` asks one of the given nodes to describe the cluster
//! (`KvRequest::Describe`: members, ranges, leaders) and caches the answer. Each operation finds
//! its key's range in the cache and sends the request to the cached leader's node — one QUIC
//! connection per node, shared by every caller, each request on its own stream. The node runs it
//! on its own replica only (lease or ReadIndex reads: linearizable) and answers `NotLeader` with
//! a hint when it does not lead; the client follows the hint, or tries the range's other
//! replicas, refreshes its cache, and retries with capped backoff until the operation's
//! deadline (`ClientOptions::request_timeout`).
//!
//! What a retry may never do is apply a write twice. A write is retried only when it certainly
//! did not run: it was never sent (no connection, no stream), or the node refused it before it
//! reached the log (`NotLeader`, a leadership change before commit). Once a write has been sent,
//! a timeout or a lost connection ends the operation with [`ClientError::OutcomeUnknown`] — never
//! with a plain failure, which could be a lie. Reads are retried freely.
//!
//! Invariants: no lock guard is held across an `.await` (the routing cache and the connection
//! table are `std::sync` locks touched in short sections); every wait is bounded by the
//! operation's deadline; `Client` is a cheap `Arc` clone, `Send + Sync`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use flotilla_engine::ids::RangeId;
pub use flotilla_engine::kv::SetCondition;
use flotilla_engine::kv::{Command, CommandResult};
pub use flotilla_engine::node::{ClusterDescription, MemberInfo, RangeInfo};
use flotilla_engine::node::{KvRequest, KvResponse};
use flotilla_engine::raft::NodeId;
use flotilla_engine::storage::span_overlap;
use flotilla_engine::store::{KvError, ReadOp, ReadResult};
use flotilla_engine::transport::{
    ClientConnection, ClientEndpoint, ClientEndpointConfig, TlsMode, TransportError,
};
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// The cluster id `flotilla start` uses.
pub const DEFAULT_CLUSTER_ID: &str = "flotilla";
/// How long one operation may keep retrying, by default.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How long one dial plus handshake may take, by default.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Leader hints followed without a pause in one operation; beyond this, hints still guide the
/// next attempt but each waits its backoff (two nodes pointing at each other cannot spin).
const HINT_HOPS_MAX: u32 = 4;
/// A node that failed to connect is not dialled again for this long.
const REDIAL_AFTER: Duration = Duration::from_millis(200);
/// How long a node whose connection was lost is avoided while another replica can be asked.
const SUSPECT_FOR: Duration = Duration::from_secs(2);
/// The routing cache is refreshed at most this often.
const REFRESH_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// Pairs asked of one range per scan request at most.
const SCAN_BATCH_MAX: usize = 1_000;

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `TlsMode::Insecure` for clusters started with `--insecure`; `TlsMode::Certs { dir }` for
    /// mutual TLS: `dir` holds `ca.pem` and a certificate signed by the cluster CA as
    /// `node.pem`/`node.key` (a node's certificate directory works, or make one with
    /// `flotilla cert create-node --name client`).
    pub tls: TlsMode,
    /// Must match the nodes' cluster id ([`DEFAULT_CLUSTER_ID`] unless configured otherwise).
    pub cluster_id: String,
    /// Deadline of one operation, retries included.
    pub request_timeout: Duration,
    /// Deadline of one connection attempt (TLS and Hello).
    pub connect_timeout: Duration,
}

impl ClientOptions {
    /// For a cluster started with `--insecure`.
    pub fn insecure() -> ClientOptions {
        ClientOptions {
            tls: TlsMode::Insecure,
            cluster_id: DEFAULT_CLUSTER_ID.into(),
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
        }
    }

    /// For a cluster with mutual TLS; see [`ClientOptions::tls`] for what `dir` holds.
    pub fn with_certs(dir: impl Into<PathBuf>) -> ClientOptions {
        ClientOptions { tls: TlsMode::Certs { dir: dir.into() }, ..ClientOptions::insecure() }
    }

    pub fn cluster_id(mut self, cluster_id: impl Into<String>) -> ClientOptions {
        self.cluster_id = cluster_id.into();
        self
    }

    pub fn request_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.request_timeout = timeout;
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.connect_timeout = timeout;
        self
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A write was sent but its answer never came (timeout, lost connection, node stopped): it
    /// may or may not have been applied. Read the key to find out; do not blindly retry a
    /// non-idempotent write.
    #[error("outcome unknown (the write may or may not have been applied): {0}")]
    OutcomeUnknown(String),
    /// Gave up within the deadline; nothing was applied by this operation.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// None of the given addresses could be reached and asked for the cluster's layout.
    #[error("cannot connect to the cluster: {0}")]
    Connect(String),
    /// A node belongs to another cluster than `ClientOptions::cluster_id`.
    #[error("cluster id mismatch: {0}")]
    ClusterMismatch(String),
    /// The request is invalid (a key or value too large, bad options).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The command was applied but could not change the data (INCR of a non-integer).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The node broke the protocol or failed internally.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClientError {
    /// True for [`ClientError::OutcomeUnknown`].
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, ClientError::OutcomeUnknown(_))
    }
}

/// Counters of what the client did; cheap, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Operations started (a scan counts once).
    pub operations: u64,
    /// Requests sent to nodes (attempts, Describe included).
    pub requests: u64,
    /// `NotLeader` answers received.
    pub not_leader: u64,
    /// Connections established.
    pub connects: u64,
    /// Routing cache refreshes (Describe answers applied).
    pub refreshes: u64,
}

/// A connection to the cluster. Clone it freely: clones share connections and caches.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    opts: ClientOptions,
    endpoint: ClientEndpoint,
    seeds: Vec<SocketAddr>,
    routing: RwLock<Routing>,
    connections: Mutex<HashMap<NodeId, Arc<Slot>>>,
    refreshing: AtomicBool,
    /// When a refresh was last tried (or a description applied).
    last_refresh: Mutex<Option<Instant>>,
    rotation: AtomicUsize,
    /// Nodes whose connection was just lost or could not be made, and when. For
    /// `SUSPECT_FOR` requests go to the range's other replicas (which serve, or answer with a
    /// hint, once one of them is elected) instead of waiting out a handshake to a dead node.
    suspects: Mutex<HashMap<NodeId, Instant>>,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Stats {
    operations: AtomicU64,
    requests: AtomicU64,
    not_leader: AtomicU64,
    connects: AtomicU64,
    refreshes: AtomicU64,
}

/// One node's connection: set once by whichever caller dials first; every other caller waits
/// on it rather than dialling too. A failure is kept for `REDIAL_AFTER`, then replaced.
type Slot = OnceCell<Result<ClientConnection, DialFailure>>;

#[derive(Clone, Debug)]
struct DialFailure {
    at: Instant,
    reason: String,
    wrong_cluster: bool,
}

/// The routing cache: members and ranges (sorted by start key) with their leaders.
#[derive(Debug, Default)]
struct Routing {
    members: BTreeMap<NodeId, SocketAddr>,
    ranges: Vec<RangeInfo>,
}

impl Routing {
    fn range_index(&self, key: &[u8]) -> Option<usize> {
        // The last range starting at or before `key`, if it also contains it.
        let i = self.ranges.partition_point(|r| r.start.as_slice() <= key).checked_sub(1)?;
        self.ranges[i].contains(key).then_some(i)
    }

    fn apply(&mut self, description: ClusterDescription) {
        if !description.members.is_empty() {
            self.members = description.members.iter().map(|m| (m.id, m.addr)).collect();
        }
        if !description.ranges.is_empty() {
            let mut ranges = description.ranges;
            ranges.sort_by(|a, b| a.start.cmp(&b.start));
            // Keep what we learned from hints when the describing node knows no leader.
            for range in &mut ranges {
                if range.leader.is_none() {
                    range.leader = self.ranges.iter().find(|r| r.id == range.id).and_then(|r| r.leader);
                }
            }
            self.ranges = ranges;
        }
    }
}

/// What one attempt produced, short of an answer.
enum AttemptError {
    /// Never sent: the request did not run.
    NotSent(String),
    /// Sent, no answer: it may have run.
    Unknown(String),
    /// Retrying cannot help.
    Fatal(ClientError),
}

/// An answer, its error split out.
enum Answer {
    Command(CommandResult),
    Read(ReadResult),
    Describe(ClusterDescription),
}

impl Client {
    /// Connects to the cluster through any of `addrs` (nodes' `--listen` addresses), learns its
    /// layout, and returns a client that routes to leaders. Tries the addresses in turn until
    /// `opts.request_timeout`; a node of another cluster fails at once with
    /// [`ClientError::ClusterMismatch`].
    pub async fn connect(addrs: &[SocketAddr], opts: ClientOptions) -> Result<Client, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Invalid("no address to connect to".into()));
        }
        if opts.request_timeout.is_zero() || opts.connect_timeout.is_zero() {
            return Err(ClientError::Invalid("timeouts must be positive".into()));
        }
        let endpoint = ClientEndpoint::new(ClientEndpointConfig {
            handshake_timeout: opts.connect_timeout,
            ..ClientEndpointConfig::new(opts.tls.clone(), opts.cluster_id.clone())
        })
        .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let client = Client {
            inner: Arc::new(Inner {
                opts,
                endpoint,
                seeds: addrs.to_vec(),
                routing: RwLock::new(Routing::default()),
                connections: Mutex::new(HashMap::new()),
                refreshing: AtomicBool::new(false),
                last_refresh: Mutex::new(None),
                rotation: AtomicUsize::new(0),
                suspects: Mutex::new(HashMap::new()),
                stats: Stats::default(),
            }),
        };
        let deadline = Instant::now() + client.inner.opts.request_timeout;
        let mut backoff = BACKOFF_FIRST;
        loop {
            let mut errors = Vec::new();
            let mut any_unreachable = false;
            for &addr in addrs {
                match client.describe_via_seed(addr, deadline).await {
                    Ok(()) => return Ok(client),
                    Err(TransportError::WrongCluster { addr, reason }) => {
                        client.close();
                        return Err(ClientError::ClusterMismatch(format!("{addr}: {reason}")));
                    }
                    Err(e) => {
                        any_unreachable |= matches!(
                            e,
                            TransportError::Unreachable { .. }
                                | TransportError::Lost { .. }
                                | TransportError::Timeout { .. }
                        );
                        errors.push(format!("{addr}: {e}"));
                    }
                }
            }
            // Every node answered and refused (TLS, capacity): waiting will not change that.
            if !any_unreachable || Instant::now() + backoff > deadline {
                client.close();
                return Err(ClientError::Connect(errors.join("; ")));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Dials a seed address (whose node id we do not know yet) and asks it to describe the
    /// cluster. On success the connection is kept for its node.
    async fn describe_via_seed(&self, addr: SocketAddr, deadline: Instant) -> Result<(), TransportError> {
        let connection = self.inner.endpoint.connect(addr, None).await?;
        self.inner.stats.connects.fetch_add(1, Ordering::Relaxed);
        let payload = encode(&KvRequest::Describe);
        let timeout = deadline.saturating_duration_since(Instant::now()).min(self.inner.opts.connect_timeout);
        self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        let bytes = connection.request(payload, timeout).await?;
        match postcard::from_bytes::<KvResponse>(&bytes) {
            Ok(KvResponse::Describe(description)) => {
                self.apply_description(description);
                let slot = Arc::new(Slot::new_with(Some(Ok(connection.clone()))));
                self.lock_connections().insert(connection.node_id(), slot);
                Ok(())
            }
            Ok(other) => {
                connection.close();
                Err(TransportError::Remote {
                    peer: connection.node_id(),
                    message: format!("answered {other:?}"),
                })
            }
            Err(e) => {
                connection.close();
                Err(TransportError::Protocol {
                    peer: connection.node_id(),
                    reason: format!("bad answer: {e}"),
                })
            }
        }
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Arc<Slot>>> {
        self.inner.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_routing(&self) -> std::sync::RwLockReadGuard<'_, Routing> {
        self.inner.routing.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_routing(&self) -> std::sync::RwLockWriteGuard<'_, Routing> {
        self.inner.routing.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn apply_description(&self, description: ClusterDescription) {
        self.inner.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        self.write_routing().apply(description);
        *self.inner.last_refresh.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(Instant::now());
    }

    // ----------------------------------------------------------------- the operations

    /// The value of `key`, or `None`. Linearizable.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        self.count_operation();
        let range = self.range_of(key)?;
        match self
            .run(range, &KvRequest::Read { range, op: ReadOp::Get { key: key.to_vec() } }, false)
            .await?
        {
            Answer::Read(ReadResult::Value(value)) => Ok(value),
            _ => Err(ClientError::Internal("mismatched answer to a get".into())),
        }
    }

    /// Sets `key` to `value`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        self.put_if(key, value, SetCondition::Always).await.map(|_| ())
    }

    /// Sets `key` to `value` if `condition` holds; returns whether it was written.
    pub async fn put_if(
        &self,
        key: &[u8],
        value: &[u8],
        condition: SetCondition,
    ) -> Result<bool, ClientError> {
        let command = Command::Put { key: key.to_vec(), value: value.to_vec(), condition };
        match self.command(key, command).await? {
            CommandResult::Written(written) => Ok(written),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        match self.command(key, Command::Delete { keys: vec![key.to_vec()] }).await? {
            CommandResult::Deleted(n) => Ok(n > 0),
            other => Err(unexpected(&other)),
        }
    }

    /// Adds `delta` to the decimal integer at `key` (missing: 0); returns the new value.
    pub async fn incr_by(&self, key: &[u8], delta: i64) -> Result<i64, ClientError> {
        match self.command(key, Command::IncrBy { key: key.to_vec(), delta }).await? {
            CommandResult::Integer(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// Appends `suffix` to the value at `key`; returns the new length.
    pub async fn append(&self, key: &[u8], suffix: &[u8]) -> Result<u64, ClientError> {
        match self.command(key, Command::Append { key: key.to_vec(), suffix: suffix.to_vec() }).await? {
            CommandResult::Length(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    /// Up to `limit` pairs with `start <= key < end` in key order, across ranges; an empty `end`
    /// means the end of the keyspace. Each range's part is a linearizable read; the scan as a
    /// whole is not one snapshot.
    pub async fn scan(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        self.count_operation();
        let mut out = Vec::new();
        // The ranges overlapping [start, end), in key order.
        let spans: Vec<(RangeId, Vec<u8>, Vec<u8>)> = {
            let routing = self.read_routing();
            routing
                .ranges
                .iter()
                .filter_map(|r| span_overlap(&r.start, &r.end, start, end).map(|(from, to)| (r.id, from, to)))
                .collect()
        };
        if spans.is_empty() && limit > 0 && (end.is_empty() || start < end) {
            return Err(ClientError::Unavailable("no range known for the scan (empty routing cache)".into()));
        }
        for (range, mut from, to) in spans {
            // Page through the range until it is exhausted or the limit is reached.
            while out.len() < limit {
                let want = (limit - out.len()).min(SCAN_BATCH_MAX);
                let op = ReadOp::Scan { start: from.clone(), end: to.clone(), limit: want as u32 };
                let pairs = match self.run(range, &KvRequest::Read { range, op }, false).await? {
                    Answer::Read(ReadResult::Pairs(pairs)) => pairs,
                    _ => return Err(ClientError::Internal("mismatched answer to a scan".into())),
                };
                let full = pairs.len() == want;
                if let Some((last, _)) = pairs.last() {
                    from = last.clone();
                    from.push(0);
                }
                out.extend(pairs);
                if !full {
                    break;
                }
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Asks the cluster for its current layout, updates the routing cache with it, and returns
    /// it.
    pub async fn describe(&self) -> Result<ClusterDescription, ClientError> {
        self.count_operation();
        let deadline = Instant::now() + self.inner.opts.request_timeout;
        let mut last_error = String::from("no member known");
        let mut backoff = BACKOFF_FIRST;
        loop {
            for node in self.describe_candidates() {
                match self.attempt(node, encode(&KvRequest::Describe), deadline).await {
                    Ok(Ok(Answer::Describe(description))) => {
                        self.apply_description(description.clone());
                        return Ok(description);
                    }
                    Ok(Ok(_)) => last_error = format!("{node} answered something else"),
                    Ok(Err(e)) => last_error = format!("{node}: {e}"),
                    Err(AttemptError::Fatal(e)) => return Err(e),
                    Err(AttemptError::NotSent(why) | AttemptError::Unknown(why)) => last_error = why,
                }
            }
            if Instant::now() + backoff > deadline {
                return Err(ClientError::Unavailable(format!("describe: {last_error}")));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The cached ranges (with the leaders the client believes in), in key order.
    pub fn ranges(&self) -> Vec<RangeInfo> {
        self.read_routing().ranges.clone()
    }

    /// The cached members.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.read_routing().members.iter().map(|(&id, &addr)| MemberInfo { id, addr }).collect()
    }

    pub fn stats(&self) -> ClientStats {
        let s = &self.inner.stats;
        ClientStats {
            operations: s.operations.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            not_leader: s.not_leader.load(Ordering::Relaxed),
            connects: s.connects.load(Ordering::Relaxed),
            refreshes: s.refreshes.load(Ordering::Relaxed),
        }
    }

    /// Closes every connection. Operations still running fail; later ones reconnect.
    pub fn close(&self) {
        let slots: Vec<Arc<Slot>> = self.lock_connections().drain().map(|(_, slot)| slot).collect();
        for slot in slots {
            if let Some(Ok(connection)) = slot.get() {
                connection.close();
            }
        }
    }

    // ----------------------------------------------------------------- routing

    fn count_operation(&self) {
        self.inner.stats.operations.fetch_add(1, Ordering::Relaxed);
    }

    fn range_of(&self, key: &[u8]) -> Result<RangeId, ClientError> {
        let routing = self.read_routing();
        routing
            .range_index(key)
            .map(|i| routing.ranges[i].id)
            .ok_or_else(|| ClientError::Unavailable(format!("no known range holds key {key:02x?}")))
    }

    async fn command(&self, key: &[u8], command: Command) -> Result<CommandResult, ClientError> {
        self.count_operation();
        command.validate().map_err(ClientError::Invalid)?;
        let range = self.range_of(key)?;
        match self.run(range, &KvRequest::Propose { range, command }, true).await? {
            Answer::Command(CommandResult::Rejected(why)) => Err(ClientError::Rejected(why)),
            Answer::Command(result) => Ok(result),
            _ => Err(ClientError::Internal("mismatched answer to a command".into())),
        }
    }

    /// Where to send the next attempt for `range`: its cached leader, else its replicas in
    /// turn (each answers with a hint if it knows the leader).
    fn target(&self, range: RangeId) -> Option<NodeId> {
        let suspects = self.live_suspects();
        let routing = self.read_routing();
        let r = routing.ranges.iter().find(|r| r.id == range)?;
        if let Some(leader) = r.leader.filter(|l| !suspects.contains(l)) {
            return Some(leader);
        }
        let all: Vec<NodeId> = if r.replicas.is_empty() {
            routing.members.keys().copied().collect()
        } else {
            r.replicas.clone()
        };
        // Suspect nodes only when no other replica is left to ask.
        let healthy: Vec<NodeId> = all.iter().copied().filter(|n| !suspects.contains(n)).collect();
        let candidates = if healthy.is_empty() { all } else { healthy };
        if candidates.is_empty() {
            return None;
        }
        let turn = self.inner.rotation.fetch_add(1, Ordering::Relaxed);
        Some(candidates[turn % candidates.len()])
    }

    /// Records who leads `range` (or that we no longer know), unless a newer belief replaced
    /// the one the caller acted on.
    fn set_leader(&self, range: RangeId, acted_on: Option<NodeId>, leader: Option<NodeId>) {
        let mut routing = self.write_routing();
        if let Some(r) = routing.ranges.iter_mut().find(|r| r.id == range) {
            if r.leader == acted_on || leader.is_some() {
                r.leader = leader;
            }
        }
    }

    /// Runs one request against the leader of `range` until it has an answer, fails for good,
    /// or the deadline passes. `write` requests are never resent once they may have run.
    async fn run(&self, range: RangeId, request: &KvRequest, write: bool) -> Result<Answer, ClientError> {
        let payload = encode(request);
        let deadline = Instant::now() + self.inner.opts.request_timeout;
        let mut backoff = BACKOFF_FIRST;
        let mut hops = 0u32;
        let mut last_error = String::from("no leader known yet");
        loop {
            let target = self.target(range);
            let cached = self.read_routing().ranges.iter().find(|r| r.id == range).and_then(|r| r.leader);
            if let Some(node) = target {
                match self.attempt(node, payload.clone(), deadline).await {
                    Ok(Ok(answer)) => {
                        if cached != Some(node) {
                            self.set_leader(range, cached, Some(node));
                        }
                        return Ok(answer);
                    }
                    Ok(Err(KvError::NotLeader { leader_hint, .. })) => {
                        self.inner.stats.not_leader.fetch_add(1, Ordering::Relaxed);
                        let hint = leader_hint.filter(|&h| h != node);
                        self.set_leader(range, cached, hint);
                        last_error = format!("{node} does not lead {range}");
                        if hint.is_some() && hops < HINT_HOPS_MAX {
                            hops += 1;
                            continue;
                        }
                    }
                    Ok(Err(KvError::RangeNotFound(_))) => {
                        last_error = format!("{node} does not host {range}");
                        self.set_leader(range, cached, None);
                        self.refresh_soon(deadline).await;
                    }
                    Ok(Err(KvError::Invalid(what))) => return Err(ClientError::Invalid(what)),
                    // The node stopped (or its storage failed) with the write in flight: it may
                    // still commit through the other replicas.
                    Ok(Err(e @ (KvError::Unknown(_) | KvError::Storage(_)))) if write => {
                        return Err(ClientError::OutcomeUnknown(format!("{node}: {e}")));
                    }
                    Ok(Err(e)) => {
                        // Unavailable: no leader yet, a leadership change before commit, a node
                        // starting or stopping. Nothing was applied; look again after a pause.
                        last_error = format!("{node}: {e}");
                        self.set_leader(range, cached, None);
                    }
                    Err(AttemptError::Fatal(e)) => return Err(e),
                    Err(AttemptError::Unknown(why)) if write => return Err(ClientError::OutcomeUnknown(why)),
                    Err(AttemptError::NotSent(why) | AttemptError::Unknown(why)) => {
                        last_error = why;
                        self.set_leader(range, cached, None);
                        self.refresh_soon(deadline).await;
                    }
                }
            } else {
                self.refresh_soon(deadline).await;
            }
            if Instant::now() + backoff > deadline {
                return Err(ClientError::Unavailable(format!(
                    "{range}: {last_error} (gave up after {:?})",
                    self.inner.opts.request_timeout
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Sends `payload` to `node` once, within `deadline`.
    async fn attempt(
        &self,
        node: NodeId,
        payload: Vec<u8>,
        deadline: Instant,
    ) -> Result<Result<Answer, KvError>, AttemptError> {
        let connection = self.connection(node, deadline).await?;
        let timeout = deadline.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Err(AttemptError::NotSent("deadline passed before sending".into()));
        }
        self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = connection.request(payload, timeout).await;
        match &result {
            Ok(_) => self.clear_suspect(node),
            // Never sent, or lost with the connection: the node may be down.
            Err(TransportError::Unreachable { .. }) => self.suspect(node),
            Err(_) if connection.is_closed() => self.suspect(node),
            Err(_) => {}
        }
        match result {
            Ok(bytes) => match postcard::from_bytes::<KvResponse>(&bytes) {
                Ok(KvResponse::Command(result)) => Ok(result.map(Answer::Command)),
                Ok(KvResponse::Read(result)) => Ok(result.map(Answer::Read)),
                Ok(KvResponse::Describe(description)) => Ok(Ok(Answer::Describe(description))),
                Err(e) => Err(AttemptError::Unknown(format!("{node} sent a bad answer: {e}"))),
            },
            Err(e @ TransportError::Unreachable { .. }) => {
                self.forget_if_closed(node);
                Err(AttemptError::NotSent(e.to_string()))
            }
            Err(e) => {
                self.forget_if_closed(node);
                Err(AttemptError::Unknown(e.to_string()))
            }
        }
    }

    /// The connection to `node`, dialling it if there is none (one dial at a time per node).
    async fn connection(&self, node: NodeId, deadline: Instant) -> Result<ClientConnection, AttemptError> {
        let slot = {
            let mut connections = self.lock_connections();
            let usable = connections.get(&node).is_some_and(|slot| match slot.get() {
                None => true,
                Some(Ok(connection)) => !connection.is_closed(),
                Some(Err(failure)) => failure.at.elapsed() < REDIAL_AFTER,
            });
            if !usable {
                connections.insert(node, Arc::new(Slot::new()));
            }
            connections.get(&node).cloned().ok_or_else(|| AttemptError::NotSent("no slot".into()))?
        };
        let addr = self.read_routing().members.get(&node).copied();
        let Some(addr) = addr else {
            return Err(AttemptError::NotSent(format!("no address known for {node}")));
        };
        let dial = slot.get_or_init(|| async {
            match self.inner.endpoint.connect(addr, Some(node)).await {
                Ok(connection) => {
                    self.inner.stats.connects.fetch_add(1, Ordering::Relaxed);
                    Ok(connection)
                }
                Err(e) => Err(DialFailure {
                    at: Instant::now(),
                    reason: format!("{node} at {addr}: {e}"),
                    wrong_cluster: matches!(e, TransportError::WrongCluster { .. }),
                }),
            }
        });
        match tokio::time::timeout_at(deadline, dial).await {
            Ok(Ok(connection)) => Ok(connection.clone()),
            Ok(Err(failure)) if failure.wrong_cluster => {
                Err(AttemptError::Fatal(ClientError::ClusterMismatch(failure.reason.clone())))
            }
            Ok(Err(failure)) => {
                self.suspect(node);
                Err(AttemptError::NotSent(failure.reason.clone()))
            }
            Err(_) => Err(AttemptError::NotSent(format!("no connection to {node} before the deadline"))),
        }
    }

    /// Nodes whose connection failed within the last `SUSPECT_FOR`.
    fn live_suspects(&self) -> Vec<NodeId> {
        let mut suspects = self.inner.suspects.lock().unwrap_or_else(|p| p.into_inner());
        if suspects.is_empty() {
            return Vec::new();
        }
        suspects.retain(|_, at| at.elapsed() < SUSPECT_FOR);
        suspects.keys().copied().collect()
    }

    fn suspect(&self, node: NodeId) {
        self.inner.suspects.lock().unwrap_or_else(|p| p.into_inner()).insert(node, Instant::now());
    }

    fn clear_suspect(&self, node: NodeId) {
        let mut suspects = self.inner.suspects.lock().unwrap_or_else(|p| p.into_inner());
        if !suspects.is_empty() {
            suspects.remove(&node);
        }
    }

    /// Drops `node`'s connection from the table if it has closed (the next caller redials).
    fn forget_if_closed(&self, node: NodeId) {
        let mut connections = self.lock_connections();
        if connections.get(&node).is_some_and(|slot| matches!(slot.get(), Some(Ok(c)) if c.is_closed())) {
            connections.remove(&node);
        }
    }

    /// Nodes to ask for a description: connected ones first, then every member.
    fn describe_candidates(&self) -> Vec<NodeId> {
        let connected: Vec<NodeId> = self
            .lock_connections()
            .iter()
            .filter(|(_, slot)| matches!(slot.get(), Some(Ok(c)) if !c.is_closed()))
            .map(|(&id, _)| id)
            .collect();
        let mut out = connected.clone();
        out.extend(self.read_routing().members.keys().filter(|id| !connected.contains(id)));
        out
    }

    /// Refreshes the routing cache unless another caller is doing it or one was tried within
    /// `REFRESH_INTERVAL_MIN`. Bounded by `deadline` and the connect timeout.
    async fn refresh_soon(&self, deadline: Instant) {
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.inner.refreshing);
        {
            let mut last = self.inner.last_refresh.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_some_and(|at| at.elapsed() < REFRESH_INTERVAL_MIN) {
                return;
            }
            *last = Some(Instant::now());
        }
        let deadline = deadline.min(Instant::now() + self.inner.opts.connect_timeout);
        for node in self.describe_candidates() {
            if let Ok(Ok(Answer::Describe(description))) =
                self.attempt(node, encode(&KvRequest::Describe), deadline).await
            {
                self.apply_description(description);
                return;
            }
        }
        // No member answered: the seeds may know better (a cluster moved under us).
        for &addr in &self.inner.seeds {
            if self.describe_via_seed(addr, deadline).await.is_ok() {
                return;
            }
        }
    }
}

fn encode(request: &KvRequest) -> Vec<u8> {
    // A plain enum of byte vectors and integers always encodes.
    postcard::to_stdvec(request).unwrap_or_default()
}

fn unexpected(result: &CommandResult) -> ClientError {
    ClientError::Internal(format!("unexpected result {result:?}"))
}
