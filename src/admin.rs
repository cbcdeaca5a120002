//! The admin HTTP endpoint (`--http`): `/metrics` (Prometheus text), `/status` (JSON),
//! `/digest` (per-range data fingerprints, JSON), `/admin/transfer-leader?range=R&to=N`, and a
//! one-line index. A deliberately tiny HTTP/1.1 server: GET only, one request per connection,
//! bounded request size and time — enough for Prometheus, curl and the test tools, with no
//! web framework to build.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Requests longer than this are refused.
const REQUEST_BYTES_MAX: usize = 8 << 10;
/// A client that sends nothing useful for this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent admin connections at most.
const CONNECTIONS_MAX: usize = 64;

/// A boxed future, so that [`AdminSource`] stays object-safe.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the admin endpoint serves.
pub trait AdminSource: Send + Sync + 'static {
    fn status_json(&self) -> String;
    fn metrics_text(&self) -> String;
    /// Every hosted range's applied index, key count and data hash; reads all the data.
    fn digest_json(&self) -> BoxFuture<'_, Result<String, String>>;
    /// Asks this node's replica of `range` (which must lead it) to hand leadership to `to`.
    fn transfer_leader(&self, range: u64, to: u64) -> BoxFuture<'_, Result<String, String>>;
}

/// The value of `name` in a query string like `a=1&b=2`.
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

pub async fn serve(listener: TcpListener, source: Arc<dyn AdminSource>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, source)).await {
                tracing::debug!(%peer, "admin request timed out: {e}");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, source: Arc<dyn AdminSource>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > REQUEST_BYTES_MAX {
            return respond(&mut stream, 431, "text/plain", "request header fields too large\n").await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", "only GET is supported\n").await;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/metrics" => respond(&mut stream, 200, "text/plain; version=0.0.4", &source.metrics_text()).await,
        "/status" => respond(&mut stream, 200, "application/json", &source.status_json()).await,
        "/digest" => match source.digest_json().await {
            Ok(json) => respond(&mut stream, 200, "application/json", &json).await,
            Err(e) => respond(&mut stream, 503, "text/plain", &format!("{e}\n")).await,
        },
        "/admin/transfer-leader" => {
            let range = query_param(query, "range").and_then(|v| v.parse::<u64>().ok());
            let to = query_param(query, "to").and_then(|v| v.parse::<u64>().ok());
            let (Some(range), Some(to)) = (range, to) else {
                let usage = "usage: /admin/transfer-leader?range=RANGE_ID&to=NODE_ID\n";
                return respond(&mut stream, 400, "text/plain", usage).await;
            };
            match source.transfer_leader(range, to).await {
                Ok(text) => respond(&mut stream, 200, "text/plain", &format!("{text}\n")).await,
                Err(e) => respond(&mut stream, 409, "text/plain", &format!("{e}\n")).await,
            }
        }
        "/" => {
            let index = "flotilla admin: /status (JSON), /metrics (Prometheus), /digest (JSON), \
                         /admin/transfer-leader?range=R&to=N\n";
            respond(&mut stream, 200, "text/plain", index).await
        }
        _ => respond(&mut stream, 404, "text/plain", "not found: try /status or /metrics\n").await,
    }
}

async fn respond(stream: &mut TcpStream, code: u16, content_type: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        503 => "Service Unavailable",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the admin address, with a clear error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot bind --http {addr}: {e}"))
}
