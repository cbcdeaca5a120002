//! A harness for tests that run real `flotilla` processes: each node on its own address
//! 127.0.0.N, data in a temp dir, SIGKILL / restart / SIGSTOP / SIGCONT, leaders from
//! `/status`, a tiny RESP client. Every process it starts is killed when the harness drops.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Node {
    pub id: usize,
    pub child: Option<Child>,
    pub listen: SocketAddr,
    pub resp: SocketAddr,
    pub http: SocketAddr,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    join: String,
    ranges: u32,
    extra_args: Vec<String>,
    /// Environment for the nodes' processes: (node or every node, name, value).
    env: Vec<(Option<usize>, String, String)>,
}

/// A base port unlikely to collide with other tests running at the same time, and below the
/// kernel's ephemeral range (32768+), where outgoing connections would take ports from us.
fn base_port(name: &str) -> u16 {
    let h = name.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    11_000 + ((h ^ std::process::id()) % 5_000) as u16 * 4
}

impl Cluster {
    /// Starts `n` nodes with `ranges` initial ranges. `name` keeps ports apart between tests.
    pub fn start(name: &str, n: usize, ranges: u32) -> Cluster {
        Cluster::start_with(name, n, ranges, &[])
    }

    pub fn start_with(name: &str, n: usize, ranges: u32, extra_args: &[&str]) -> Cluster {
        Cluster::start_with_env(name, n, ranges, extra_args, &[])
    }

    /// Like `start_with`, with environment variables for every node (`None`) or one node.
    pub fn start_with_env(
        name: &str,
        n: usize,
        ranges: u32,
        extra_args: &[&str],
        env: &[(Option<usize>, &str, &str)],
    ) -> Cluster {
        let mut cluster = Cluster::prepare(name, n, ranges, extra_args, env);
        cluster.start_all();
        cluster
    }

    /// A cluster's addresses and directories, with no process started yet.
    pub fn prepare(
        name: &str,
        n: usize,
        ranges: u32,
        extra_args: &[&str],
        env: &[(Option<usize>, &str, &str)],
    ) -> Cluster {
        let port = base_port(name);
        let nodes: Vec<Node> = (1..=n)
            .map(|id| Node {
                id,
                child: None,
                listen: format!("127.0.0.{id}:{port}").parse().unwrap(),
                resp: format!("127.0.0.{id}:{}", port + 1).parse().unwrap(),
                http: format!("127.0.0.{id}:{}", port + 2).parse().unwrap(),
            })
            .collect();
        let join = nodes.iter().map(|n| n.listen.to_string()).collect::<Vec<_>>().join(",");
        Cluster {
            dir: tempfile::tempdir().expect("tempdir"),
            nodes,
            join,
            ranges,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(n, k, v)| (*n, k.to_string(), v.to_string())).collect(),
        }
    }

    /// Starts every node and waits for each to answer PING.
    pub fn start_all(&mut self) {
        for id in 1..=self.nodes.len() {
            self.spawn(id);
        }
        for id in 1..=self.nodes.len() {
            self.wait_ping(id);
        }
    }

    /// If node `id`'s process has exited on its own, forgets it and returns how it ended.
    pub fn exited(&mut self, id: usize) -> Option<std::process::ExitStatus> {
        let status = self.nodes[id - 1].child.as_mut().and_then(|c| c.try_wait().ok().flatten())?;
        self.nodes[id - 1].child = None;
        Some(status)
    }

    /// The whole log of node `id`.
    pub fn log(&self, id: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{id}.log"))).unwrap_or_default()
    }

    pub fn data_dir(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("n{id}"))
    }

    pub fn spawn(&mut self, id: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("n{id}.log")))
            .expect("log file");
        let node = &self.nodes[id - 1];
        let env = self.env.iter().filter(|(n, _, _)| n.is_none_or(|n| n == id)).map(|(_, k, v)| (k, v));
        let child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .envs(env)
            .args(["start", "--id", &id.to_string(), "--listen", &node.listen.to_string()])
            .args(["--resp", &node.resp.to_string(), "--http", &node.http.to_string(), "--join", &self.join])
            .args(["--insecure", "--initial-ranges", &self.ranges.to_string()])
            // Odd nodes run network and driver on one thread, even ones a network thread beside
            // the driver's: every cluster test covers both, whatever the machine's default.
            .args(["--io-threads", if id % 2 == 1 { "0" } else { "1" }])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn flotilla");
        self.nodes[id - 1].child = Some(child);
    }

    pub fn wait_ping(&mut self, id: usize) {
        let start = Instant::now();
        loop {
            let node = &self.nodes[id - 1];
            if resp(node.resp, &[b"PING"]).is_ok_and(|r| r == Reply::Simple("PONG".into())) {
                return;
            }
            // A node that exited (a port taken, say) will never answer: say why at once.
            let exited = self.nodes[id - 1].child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("node {id} exited ({status}) before answering PING:\n{}", self.log_tail(id));
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "node {id} did not answer PING within 60 s:\n{}",
                self.log_tail(id)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.nodes[id - 1].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self, id: usize) {
        self.kill(id);
        self.spawn(id);
        self.wait_ping(id);
    }

    pub fn signal(&self, id: usize, signal: &str) {
        if let Some(child) = &self.nodes[id - 1].child {
            let _ = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status();
        }
    }

    pub fn is_up(&self, id: usize) -> bool {
        self.nodes[id - 1].child.is_some()
    }

    pub fn up_nodes(&self) -> Vec<usize> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect()
    }

    /// `/status` of a node, if it answers.
    pub fn status(&self, id: usize) -> Option<serde_json::Value> {
        let body = http_get(self.nodes[id - 1].http, "/status").ok()?;
        serde_json::from_str(&body).ok()
    }

    /// The leader of the range holding `key`, as any live node reports it (node ids are 1-based).
    pub fn leader_of_key(&self, key: &[u8]) -> Option<usize> {
        for id in self.up_nodes() {
            let Some(status) = self.status(id) else { continue };
            for r in status["ranges"].as_array()? {
                let start = hex(r["start"].as_str()?);
                let end = hex(r["end"].as_str()?);
                let inside = key >= start.as_slice() && (end.is_empty() || key < end.as_slice());
                if inside && r["role"] == "leader" {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Node ids leading at least one range.
    pub fn leaders(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for id in self.up_nodes() {
            if let Some(status) = self.status(id) {
                let leads =
                    status["ranges"].as_array().is_some_and(|rs| rs.iter().any(|r| r["role"] == "leader"));
                if leads {
                    out.push(id);
                }
            }
        }
        out
    }

    pub fn log_tail(&self, id: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("n{id}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2).filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect()
}

pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if ok() {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// One RESP command on a fresh connection.
pub fn resp(addr: SocketAddr, args: &[&[u8]]) -> std::io::Result<Reply> {
    Conn::open(addr, Duration::from_secs(15))?.call(args)
}

/// One RESP connection, for many commands.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects (within 2 s); each reply is then awaited at most `reply_timeout`.
    pub fn open(addr: SocketAddr, reply_timeout: Duration) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(reply_timeout))?;
        stream.set_nodelay(true)?;
        Ok(Conn { reader: BufReader::new(stream) })
    }

    pub fn call(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            request.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            request.extend_from_slice(a);
            request.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&request)?;
        read_reply(&mut self.reader)
    }
}

fn read_reply(reader: &mut BufReader<TcpStream>) -> std::io::Result<Reply> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    let line = line.trim_end();
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty reply"))?;
    Ok(match kind {
        "+" => Reply::Simple(rest.into()),
        "-" => Reply::Error(rest.into()),
        ":" => Reply::Integer(rest.parse().map_err(|_| bad("integer"))?),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad("bulk length"))?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let mut body = vec![0u8; len as usize + 2];
                reader.read_exact(&mut body)?;
                body.truncate(len as usize);
                Reply::Bulk(Some(body))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad("array length"))?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_reply(reader)?);
            }
            Reply::Array(items)
        }
        _ => return Err(bad("unknown reply type")),
    })
}

pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}
