//! `flotilla demo`: a local 3-node cluster as real processes, narrated. It writes and reads
//! through different nodes, shows who leads what, kills a leader and times the failover,
//! restarts it and times the catch-up, then cleans up everything it started.

#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const NODES: usize = 3;
const RANGES: u32 = 4;

/// A node process the demo started; killed on drop.
struct Proc {
    id: usize,
    child: Option<Child>,
    resp: SocketAddr,
    http: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Cluster {
    dir: PathBuf,
    exe: PathBuf,
    join: String,
    procs: Vec<Proc>,
    base_port: u16,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.procs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    fn spawn(&mut self, id: usize) -> anyhow::Result<()> {
        let host = format!("127.0.0.{id}");
        let listen = format!("{host}:{}", self.base_port);
        let resp: SocketAddr = format!("{host}:{}", self.base_port + 1).parse()?;
        let http: SocketAddr = format!("{host}:{}", self.base_port + 2).parse()?;
        let log = std::fs::File::create(self.dir.join(format!("n{id}.log")))?;
        let child = Command::new(&self.exe)
            .args(["start", "--id", &id.to_string(), "--listen", &listen])
            .args(["--resp", &resp.to_string(), "--http", &http.to_string(), "--join", &self.join])
            .args(["--insecure", "--initial-ranges", &RANGES.to_string()])
            .arg("--data-dir")
            .arg(self.dir.join(format!("n{id}")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start a node process")?;
        let proc = Proc { id, child: Some(child), resp, http };
        match self.procs.iter_mut().find(|p| p.id == id) {
            Some(slot) => *slot = proc,
            None => self.procs.push(proc),
        }
        Ok(())
    }

    fn node(&self, id: usize) -> &Proc {
        &self.procs[id - 1]
    }
}

/// Sends one command over RESP and returns the reply as text (errors prefixed with "ERR").
fn resp(addr: SocketAddr, args: &[&str]) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(12)))?;
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_string();
    match line.chars().next() {
        Some('+') | Some(':') => Ok(line[1..].to_string()),
        Some('-') => Ok(format!("ERR {}", &line[1..])),
        Some('$') => {
            let len: i64 = line[1..].parse()?;
            if len < 0 {
                return Ok("(nil)".into());
            }
            let mut body = vec![0u8; len as usize + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len as usize);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => bail!("unexpected reply {line:?}"),
    }
}

fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("{what} did not happen within {} s", timeout.as_secs())
}

/// (range id, span, leader, applied) for every range, as `node` sees them.
fn ranges(node: &Proc) -> Vec<(u64, String, Option<u64>, u64)> {
    let Ok(body) = http_get(node.http, "/status") else { return Vec::new() };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else { return Vec::new() };
    let mut out = Vec::new();
    for r in json["ranges"].as_array().into_iter().flatten() {
        let span = format!(
            "[{}, {})",
            r["start"].as_str().filter(|s| !s.is_empty()).unwrap_or("-∞"),
            r["end"].as_str().filter(|s| !s.is_empty()).unwrap_or("+∞")
        );
        out.push((
            r["id"].as_u64().unwrap_or(0),
            span,
            r["leader"].as_u64(),
            r["applied"].as_u64().unwrap_or(0),
        ));
    }
    out
}

fn show_leaders(cluster: &Cluster, viewer: usize) {
    for (id, span, leader, applied) in ranges(cluster.node(viewer)) {
        let leader = leader.map_or("none".to_string(), |l| format!("node {l}"));
        println!("  range {id} {span:<16} leader {leader:<8} applied index {applied}");
    }
}

pub fn run() -> anyhow::Result<()> {
    println!("Flotilla demo: a 3-node cluster on 127.0.0.1-3, real processes, real disks, real QUIC.\n");
    let dir = std::env::temp_dir().join(format!("flotilla-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Below the kernel's ephemeral port range (32768+), so outgoing sockets never hold our ports.
    let base_port = 12_000 + (std::process::id() % 5_000) as u16 * 3;
    let join = (1..=NODES).map(|i| format!("127.0.0.{i}:{base_port}")).collect::<Vec<_>>().join(",");
    let exe = std::env::current_exe()?;
    let mut cluster = Cluster { dir: dir.clone(), exe, join, procs: Vec::new(), base_port };
    println!("1. starting {NODES} nodes (data in {}) ...", dir.display());
    for id in 1..=NODES {
        cluster.spawn(id)?;
    }
    let took = wait_until("every node answering PING", Duration::from_secs(30), || {
        cluster.procs.iter().all(|p| resp(p.resp, &["PING"]).is_ok_and(|r| r == "PONG"))
    })?;
    let took_leaders = wait_until("a leader for every range", Duration::from_secs(30), || {
        let r = ranges(cluster.node(1));
        r.len() == RANGES as usize && r.iter().all(|(_, _, l, _)| l.is_some())
    })?;
    println!(
        "   all nodes up in {} ms; leaders elected {} ms later\n",
        took.as_millis(),
        took_leaders.as_millis()
    );

    println!("2. writing 200 keys through node 2, reading them back through node 3");
    let t = Instant::now();
    for i in 0..200 {
        let reply = resp(cluster.node(2).resp, &["SET", &format!("user:{i:03}"), &format!("value-{i}")])?;
        if reply != "OK" {
            bail!("SET user:{i:03} answered {reply}");
        }
    }
    println!("   200 SETs in {} ms (one at a time, each durable on a quorum)", t.elapsed().as_millis());
    let sample = resp(cluster.node(3).resp, &["GET", "user:042"])?;
    println!("   GET user:042 on node 3 -> {sample}");
    let count = resp(cluster.node(1).resp, &["INCRBY", "counter", "5"])?;
    println!("   INCRBY counter 5 on node 1 -> {count}\n");

    println!("3. who leads what (as node 1 sees it)");
    show_leaders(&cluster, 1);
    let leaders: Vec<u64> = ranges(cluster.node(1)).iter().filter_map(|r| r.2).collect();
    let victim =
        (1..=NODES as u64).max_by_key(|n| leaders.iter().filter(|l| *l == n).count()).unwrap_or(1) as usize;
    let survivor = if victim == 1 { 2 } else { 1 };
    println!();

    println!(
        "4. killing node {victim} (SIGKILL), the leader of {} ranges",
        leaders.iter().filter(|&&l| l == victim as u64).count()
    );
    if let Some(mut child) = cluster.procs[victim - 1].child.take() {
        child.kill()?;
        child.wait()?;
    }
    // One key inside each range, so that every range must have failed over.
    let probes: Vec<String> = ranges(cluster.node(survivor))
        .iter()
        .map(|(_, span, _, _)| {
            let start = span.trim_start_matches('[').split(',').next().unwrap_or("");
            match u8::from_str_radix(start.get(..2).unwrap_or(""), 16) {
                Ok(first) => format!("{}probe", (first + 1) as char),
                Err(_) => "!probe".to_string(),
            }
        })
        .collect();
    let mut pending: Vec<String> = probes.clone();
    let failover = wait_until("writes after the kill", Duration::from_secs(30), || {
        pending.retain(|key| !resp(cluster.node(survivor).resp, &["SET", key, "x"]).is_ok_and(|r| r == "OK"));
        pending.is_empty()
    })?;
    println!(
        "   all {} ranges accepted writes again {} ms after the kill",
        probes.len(),
        failover.as_millis()
    );
    show_leaders(&cluster, survivor);
    for j in 0..50 {
        resp(cluster.node(survivor).resp, &["SET", &format!("while-down:{j}"), "yes"])?;
    }
    println!("   wrote 50 more keys while node {victim} was down\n");

    println!("5. restarting node {victim}");
    cluster.spawn(victim)?;
    let caught_up = wait_until("the restarted node catching up", Duration::from_secs(30), || {
        let theirs = ranges(cluster.node(survivor));
        let mine = ranges(cluster.node(victim));
        !mine.is_empty() && mine.iter().zip(&theirs).all(|(m, t)| m.3 >= t.3)
    })?;
    println!("   node {victim} caught up in {} ms", caught_up.as_millis());
    let read = resp(cluster.node(victim).resp, &["GET", "while-down:7"])?;
    println!("   GET while-down:7 through node {victim} -> {read}\n");

    println!("6. cleaning up: stopping all nodes and removing {}", dir.display());
    drop(cluster);
    println!("\nDone. Run a cluster yourself: see README.md (flotilla start ... --insecure).");
    Ok(())
}
