//! The admin HTTP endpoint (`--http`): `/metrics` (Prometheus text), `/status` (JSON), and a
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

/// What the admin endpoint serves.
pub trait AdminSource: Send + Sync + 'static {
    fn status_json(&self) -> String;
    fn metrics_text(&self) -> String;
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
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => respond(&mut stream, 200, "text/plain; version=0.0.4", &source.metrics_text()).await,
        "/status" => respond(&mut stream, 200, "application/json", &source.status_json()).await,
        "/" => {
            respond(&mut stream, 200, "text/plain", "flotilla admin: /status (JSON), /metrics (Prometheus)\n")
                .await
        }
        _ => respond(&mut stream, 404, "text/plain", "not found: try /status or /metrics\n").await,
    }
}

async fn respond(stream: &mut TcpStream, code: u16, content_type: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
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
