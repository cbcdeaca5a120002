//! The nemesis workload: clients on their own threads, each with one RESP connection to a node
//! (moving to the next node when it fails), doing register reads and writes on a few hot keys
//! and adding unique elements to a set (one key each). Every operation is recorded with its
//! call and return times and its outcome: ok, failed (certainly did not happen) or unknown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::harness::{Conn, Reply};

/// How long a client waits for one reply: longer than the gateway's own retry deadline, so
/// that most faults end in a definite answer rather than an unknown outcome.
const REPLY_TIMEOUT: Duration = Duration::from_secs(12);

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub clients: usize,
    /// Register keys (few = high contention).
    pub registers: usize,
    /// Out of 100: register reads, register writes; the rest are set adds.
    pub read_percent: u32,
    pub write_percent: u32,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig { clients: 6, registers: 6, read_percent: 45, write_percent: 35 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A read's value, or `None` for a write.
    Ok(Option<Option<String>>),
    Failed(String),
    Unknown(String),
}

#[derive(Clone, Debug)]
pub enum Action {
    Read { key: String },
    Write { key: String, value: String },
    Add { element: String },
}

#[derive(Clone, Debug)]
pub struct Record {
    pub client: u64,
    pub action: Action,
    /// Nanoseconds since the workload started.
    pub call: u64,
    pub ret: u64,
    pub outcome: Outcome,
}

/// A register key; keys are spread over the printable first bytes so they land in every range.
pub fn register_key(i: usize, registers: usize) -> String {
    let first = b'!' + ((i * 90) / registers.max(1)) as u8;
    format!("{}reg{i}", first as char)
}

/// A set element's key.
pub fn element_key(client: u64, seq: u64) -> String {
    let first = b'!' + ((client * 37 + seq * 13) % 90) as u8;
    format!("{}set-c{client}-{seq}", first as char)
}

pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    records: Arc<Mutex<Vec<Record>>>,
    pub started: Instant,
}

impl Workload {
    pub fn start(addrs: Vec<SocketAddr>, cfg: WorkloadConfig) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let threads = (0..cfg.clients as u64)
            .map(|client| {
                let (stop, records, addrs, cfg) = (stop.clone(), records.clone(), addrs.clone(), cfg.clone());
                std::thread::spawn(move || client_loop(client, &addrs, &cfg, &stop, &records, started))
            })
            .collect();
        Workload { stop, threads, records, started }
    }

    /// Nanoseconds since the workload started.
    pub fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Stops every client (each finishes its operation in flight) and returns the history.
    pub fn stop(self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let mut records = std::mem::take(&mut *self.records.lock().unwrap());
        records.sort_by_key(|r| r.call);
        records
    }
}

fn client_loop(
    client: u64,
    addrs: &[SocketAddr],
    cfg: &WorkloadConfig,
    stop: &AtomicBool,
    records: &Mutex<Vec<Record>>,
    started: Instant,
) {
    let mut rng = client.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut node = client as usize % addrs.len();
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let roll = (next() % 100) as u32;
        let key = register_key((next() % cfg.registers as u64) as usize, cfg.registers);
        let action = if roll < cfg.read_percent {
            Action::Read { key }
        } else if roll < cfg.read_percent + cfg.write_percent {
            Action::Write { key, value: format!("c{client}-{seq}") }
        } else {
            Action::Add { element: element_key(client, seq) }
        };
        if conn.is_none() {
            conn = connect(addrs[node]).ok();
        }
        let call = started.elapsed().as_nanos() as u64;
        let outcome = match conn.as_mut() {
            None => Outcome::Failed(format!("cannot connect to {}", addrs[node])),
            Some(c) => {
                let reply = match &action {
                    Action::Read { key } => c.call(&[b"GET", key.as_bytes()]),
                    Action::Write { key, value } => c.call(&[b"SET", key.as_bytes(), value.as_bytes()]),
                    Action::Add { element } => c.call(&[b"SET", element.as_bytes(), b"1"]),
                };
                classify(&action, reply)
            }
        };
        let ret = started.elapsed().as_nanos() as u64;
        let failed = !matches!(outcome, Outcome::Ok(_));
        records.lock().unwrap().push(Record { client, action, call, ret, outcome });
        if failed {
            // Another node may do better; a fresh connection also clears any half-read reply.
            conn = None;
            node = (node + 1) % addrs.len();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn classify(action: &Action, reply: std::io::Result<Reply>) -> Outcome {
    let is_read = matches!(action, Action::Read { .. });
    match reply {
        Ok(Reply::Bulk(v)) if is_read => {
            Outcome::Ok(Some(v.map(|b| String::from_utf8_lossy(&b).into_owned())))
        }
        Ok(Reply::Simple(s)) if !is_read && s == "OK" => Outcome::Ok(None),
        // The gateway says "outcome unknown" when a write may have happened; any other error
        // is a definite failure (nothing was proposed, or the proposal lost its slot).
        Ok(Reply::Error(e)) if !is_read && e.contains("outcome unknown") => Outcome::Unknown(e),
        Ok(Reply::Error(e)) => Outcome::Failed(e),
        Ok(other) => Outcome::Failed(format!("unexpected reply {other:?}")),
        // A broken connection or a timeout: a write may or may not have happened.
        Err(e) if is_read => Outcome::Failed(e.to_string()),
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

/// A client connection with this workload's reply timeout.
pub fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
    Conn::open(addr, REPLY_TIMEOUT)
}
