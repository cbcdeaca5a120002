//! Test-only fault injection on outgoing Raft batches: delay, reorder, duplicate, drop.
//!
//! There is no `tc netem` on the test machines, so the QUIC transport can misbehave on purpose.
//! It is enabled **only** by the environment variable [`CHAOS_ENV_VAR`], read once at node
//! startup (`Node::start`), e.g.
//!
//! ```text
//! FLOTILLA_TEST_CHAOS="delay_ms=20,reorder=0.2,dup=0.05,drop=0.1,seed=7"
//! ```
//!
//! | key        | meaning                                                                 |
//! |------------|-------------------------------------------------------------------------|
//! | `delay_ms` | every batch waits a uniform `[0, delay_ms]` ms, in order (at most 10 000) |
//! | `reorder`  | probability that a batch is held back `delay_ms + [1, max(delay_ms, 1)]` ms while later batches overtake it |
//! | `dup`      | probability that a batch is sent twice; the copy is held back like a reordered batch |
//! | `drop`     | probability that a batch is discarded                                   |
//! | `seed`     | seeds the fault schedule (default 0); mixed with the node and peer ids  |
//!
//! Every key is optional but the spec may not be empty; probabilities are in `[0, 1]`; unknown
//! keys, repeated keys, empty items and malformed numbers are errors (the node refuses to
//! start). A node with chaos on logs a loud warning.
//!
//! Only Raft batches are affected — requests (forwarded commands, client traffic) are not — and
//! only on the sending side: a [`Stage`] per peer sits between `Transport::send` and the
//! peer's outbound queue. Deliberately, this breaks the transport's "never duplicated, never
//! reordered" promises (see [`super::Transport`]); Raft tolerates that, so the host must too.
//!
//! Invariants: the stage is bounded (at most `capacity` batches held; more are dropped and
//! counted), never blocks `send`, and dies with the transport.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::RaftBatch;
use crate::raft::NodeId;
use crate::rng::Rng;

/// The environment variable that turns chaos on. Never set it in production.
pub const CHAOS_ENV_VAR: &str = "FLOTILLA_TEST_CHAOS";
/// The largest `delay_ms` accepted.
pub const CHAOS_DELAY_MS_MAX: u64 = 10_000;

/// What the stage does to outgoing batches; see the module docs for the spec syntax.
#[derive(Clone, Debug, PartialEq)]
pub struct ChaosConfig {
    /// Upper bound of the uniform delay every batch gets, in milliseconds.
    pub delay_ms_max: u64,
    pub reorder_probability: f64,
    pub duplicate_probability: f64,
    pub drop_probability: f64,
    pub seed: u64,
}

impl ChaosConfig {
    /// Parses a spec such as `delay_ms=20,reorder=0.2,dup=0.05,drop=0.1`, strictly.
    pub fn parse(spec: &str) -> Result<ChaosConfig, String> {
        let mut cfg = ChaosConfig {
            delay_ms_max: 0,
            reorder_probability: 0.0,
            duplicate_probability: 0.0,
            drop_probability: 0.0,
            seed: 0,
        };
        if spec.trim().is_empty() {
            return Err("the spec is empty (expected e.g. delay_ms=20,reorder=0.2,dup=0.05,drop=0.1)".into());
        }
        let mut seen: Vec<&str> = Vec::new();
        for item in spec.split(',') {
            let item = item.trim();
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!("{item:?} is not KEY=VALUE"));
            };
            let (key, value) = (key.trim(), value.trim());
            if seen.contains(&key) {
                return Err(format!("{key} appears twice"));
            }
            let probability = |value: &str| -> Result<f64, String> {
                match value.parse::<f64>() {
                    Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
                    _ => Err(format!("{key}={value:?} must be a probability between 0 and 1")),
                }
            };
            match key {
                "delay_ms" => {
                    cfg.delay_ms_max = match value.parse::<u64>() {
                        Ok(ms) if ms <= CHAOS_DELAY_MS_MAX => ms,
                        _ => {
                            return Err(format!(
                                "delay_ms={value:?} must be milliseconds between 0 and {CHAOS_DELAY_MS_MAX}"
                            ))
                        }
                    }
                }
                "reorder" => cfg.reorder_probability = probability(value)?,
                "dup" => cfg.duplicate_probability = probability(value)?,
                "drop" => cfg.drop_probability = probability(value)?,
                "seed" => {
                    cfg.seed =
                        value.parse().map_err(|_| format!("seed={value:?} must be an unsigned integer"))?
                }
                _ => return Err(format!("unknown key {key:?} (known: delay_ms, reorder, dup, drop, seed)")),
            }
            seen.push(key);
        }
        Ok(cfg)
    }

    /// Reads [`CHAOS_ENV_VAR`]: `Ok(None)` when it is not set, an error naming the variable when
    /// it is set but not a valid spec.
    pub fn from_env() -> Result<Option<ChaosConfig>, String> {
        match std::env::var(CHAOS_ENV_VAR) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!("{CHAOS_ENV_VAR} is not valid UTF-8")),
            Ok(spec) => ChaosConfig::parse(&spec).map(Some).map_err(|e| format!("{CHAOS_ENV_VAR}: {e}")),
        }
    }

    /// Rechecks the bounds (the fields are public, so a config built in code is checked too).
    pub fn validate(&self) -> Result<(), String> {
        let probabilities = [self.reorder_probability, self.duplicate_probability, self.drop_probability];
        if probabilities.iter().any(|p| !(0.0..=1.0).contains(p)) {
            return Err("chaos probabilities must be between 0 and 1".into());
        }
        if self.delay_ms_max > CHAOS_DELAY_MS_MAX {
            return Err(format!("chaos delay must be at most {CHAOS_DELAY_MS_MAX} ms"));
        }
        Ok(())
    }
}

impl std::fmt::Display for ChaosConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "delay_ms={},reorder={},dup={},drop={},seed={}",
            self.delay_ms_max,
            self.reorder_probability,
            self.duplicate_probability,
            self.drop_probability,
            self.seed
        )
    }
}

/// A probability as the parts per million [`Rng::chance`] takes.
fn per_million(p: f64) -> u32 {
    (p * 1_000_000.0).round().clamp(0.0, 1_000_000.0) as u32
}

/// A batch waiting for its time; the heap pops the earliest `due`, ties in arrival order.
struct Held {
    due: Instant,
    seq: u64,
    batch: RaftBatch,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: `BinaryHeap` is a max-heap and we want the earliest first.
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// The chaos between `send` and one peer's outbound queue.
#[derive(Debug)]
pub struct Stage {
    drop: u32,
    duplicate: u32,
    reorder: u32,
    delay_ms_max: u64,
    rng: Rng,
    capacity: usize,
    peer_label: String,
}

impl Stage {
    /// A stage for batches from `node` to `peer`, holding at most `capacity` batches.
    pub fn new(cfg: &ChaosConfig, node: NodeId, peer: NodeId, capacity: usize) -> Stage {
        // Distinct, reproducible schedules per (seed, node, peer).
        let seed = cfg.seed
            ^ node.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ peer.0.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        Stage {
            drop: per_million(cfg.drop_probability),
            duplicate: per_million(cfg.duplicate_probability),
            reorder: per_million(cfg.reorder_probability),
            delay_ms_max: cfg.delay_ms_max,
            rng: Rng::new(seed),
            capacity,
            peer_label: peer.0.to_string(),
        }
    }

    fn count(&self, fault: &'static str) {
        metrics::counter!("flotilla_transport_chaos_faults_total", "fault" => fault, "peer" => self.peer_label.clone())
            .increment(1);
    }

    /// Runs until `input` closes: takes batches, schedules them, and forwards each to `output`
    /// when it is due (dropping it if `output` is full, like `send` would).
    pub async fn run(mut self, mut input: mpsc::Receiver<RaftBatch>, output: mpsc::Sender<RaftBatch>) {
        let mut held: BinaryHeap<Held> = BinaryHeap::new();
        let mut seq: u64 = 0;
        // The due time of the last in-order batch: in-order batches never leave before it.
        let mut in_order_due = Instant::now();
        loop {
            let next_due = held.peek().map(|h| h.due);
            tokio::select! {
                batch = input.recv() => {
                    let Some(mut batch) = batch else { return };
                    if self.rng.chance(self.drop) {
                        self.count("drop");
                        continue;
                    }
                    let copies = if self.rng.chance(self.duplicate) {
                        self.count("duplicate");
                        2
                    } else {
                        1
                    };
                    let now = Instant::now();
                    for copy in 0..copies {
                        let held_back = copy == 1 || self.rng.chance(self.reorder);
                        let due = if held_back {
                            if copy == 0 {
                                self.count("reorder");
                            }
                            let extra = self.rng.range_inclusive(1, self.delay_ms_max.max(1));
                            now + Duration::from_millis(self.delay_ms_max + extra)
                        } else {
                            let delay = Duration::from_millis(self.rng.range_inclusive(0, self.delay_ms_max));
                            in_order_due = in_order_due.max(now + delay);
                            in_order_due
                        };
                        if held.len() >= self.capacity {
                            self.count("overflow");
                            continue;
                        }
                        seq += 1;
                        let batch = if copy + 1 == copies { std::mem::take(&mut batch) } else { batch.clone() };
                        held.push(Held { due, seq, batch });
                    }
                }
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                    let now = Instant::now();
                    while held.peek().is_some_and(|h| h.due <= now) {
                        let Some(h) = held.pop() else { break };
                        if output.try_send(h.batch).is_err() {
                            self.count("overflow");
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use super::*;
    use crate::ids::RangeId;
    use crate::raft::{LogIndex, Term};
    use crate::transport::wire::HeartbeatEntry;
    use crate::transport::{handler_fn, QuicConfig, QuicTransport, TlsMode, Transport};

    #[test]
    fn chaos_spec_parses_strictly() {
        let cfg = ChaosConfig::parse("delay_ms=20,reorder=0.2,dup=0.05,drop=0.1").expect("valid");
        assert_eq!(
            cfg,
            ChaosConfig {
                delay_ms_max: 20,
                reorder_probability: 0.2,
                duplicate_probability: 0.05,
                drop_probability: 0.1,
                seed: 0
            }
        );
        let cfg = ChaosConfig::parse(" dup = 1 , seed=42 ").expect("spaces and a subset are fine");
        assert_eq!((cfg.duplicate_probability, cfg.seed, cfg.delay_ms_max), (1.0, 42, 0));
        // The Display form parses back to the same config.
        assert_eq!(ChaosConfig::parse(&cfg.to_string()), Ok(cfg));
        for bad in [
            "",
            "   ",
            "delay_ms=20,",
            "delay_ms",
            "delay=20",
            "delay_ms=-1",
            "delay_ms=20ms",
            "delay_ms=10001",
            "reorder=1.5",
            "drop=-0.1",
            "dup=NaN",
            "dup=0.1,dup=0.2",
            "seed=x",
            "drop=0.1;dup=0.1",
        ] {
            assert!(ChaosConfig::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(ChaosConfig::parse("drop=0.1").expect("valid").validate().is_ok());
        let bad = ChaosConfig { drop_probability: 2.0, ..ChaosConfig::parse("drop=0").expect("valid") };
        assert!(bad.validate().is_err());
    }

    fn numbered(from: NodeId, to: NodeId, seq: u64) -> RaftBatch {
        RaftBatch {
            from,
            to,
            heartbeats: vec![HeartbeatEntry {
                range: RangeId(1),
                term: Term(1),
                commit: LogIndex(seq),
                read_seq: seq,
            }],
            ..RaftBatch::default()
        }
    }

    /// A real QUIC pair with chaos on the sender: everything still arrives (no drops asked
    /// for), and duplicates and reorderings are visible to the receiver.
    #[test]
    fn chaos_transport_pair_delivers_with_visible_duplicates_and_reordering() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
            let echo = || handler_fn(|_, p| async move { p });
            let (b_tx, mut b_rx) = mpsc::channel(8_192);
            let b =
                QuicTransport::start(QuicConfig::new(NodeId(2), any, "c", TlsMode::Insecure), b_tx, echo())
                    .await
                    .expect("start b");
            let mut a_cfg = QuicConfig::new(NodeId(1), any, "c", TlsMode::Insecure);
            a_cfg.peers = BTreeMap::from([(NodeId(2), b.local_addr())]);
            a_cfg.chaos =
                Some(ChaosConfig::parse("delay_ms=5,reorder=0.3,dup=0.2,drop=0,seed=3").expect("spec"));
            let (a_tx, _a_rx) = mpsc::channel(16);
            let a = QuicTransport::start(a_cfg, a_tx, echo()).await.expect("start a");

            // Wait for the connection: probes (seq u64::MAX) until one arrives.
            let deadline = Instant::now() + Duration::from_secs(60);
            'connect: loop {
                assert!(Instant::now() < deadline, "no connection");
                a.send(numbered(NodeId(1), NodeId(2), u64::MAX));
                let wait = Instant::now() + Duration::from_millis(100);
                while let Ok(Some(batch)) = tokio::time::timeout_at(wait, b_rx.recv()).await {
                    if batch.heartbeats[0].read_seq == u64::MAX {
                        break 'connect;
                    }
                }
            }
            const BATCHES: u64 = 400;
            for seq in 0..BATCHES {
                a.send(numbered(NodeId(1), NodeId(2), seq));
                // Spread over time so that held-back batches really are overtaken.
                if seq % 20 == 19 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let mut seen: Vec<u64> = Vec::new();
            let mut distinct = std::collections::BTreeSet::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while distinct.len() < BATCHES as usize {
                let batch = tokio::time::timeout_at(deadline, b_rx.recv())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("only {} of {BATCHES} distinct batches arrived", distinct.len())
                    })
                    .expect("open");
                assert_eq!((batch.from, batch.to), (NodeId(1), NodeId(2)));
                let seq = batch.heartbeats[0].read_seq;
                if seq != u64::MAX {
                    seen.push(seq);
                    distinct.insert(seq);
                }
            }
            // Late duplicates still on their way.
            while let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(300), b_rx.recv()).await {
                if batch.heartbeats[0].read_seq != u64::MAX {
                    seen.push(batch.heartbeats[0].read_seq);
                }
            }
            let duplicates = seen.len() - distinct.len();
            let inversions = seen.windows(2).filter(|w| w[1] < w[0]).count();
            assert!(duplicates > 0, "no duplicate seen in {} deliveries", seen.len());
            assert!(inversions > 0, "no reordering seen");
            a.shutdown().await;
            b.shutdown().await;
        });
    }
}
