//! The RESP listener: accepts clients, runs one task per connection, enforces the connection
//! limit, and shuts down gracefully.
//!
//! Invariants:
//! - At most `connections_max` connections are served at once; each holds a semaphore permit for
//!   its whole life, released even if its task panics. A client over the limit gets
//!   `-ERR max number of clients reached` and is closed, as in Redis.
//! - Accept errors (EMFILE and friends) never end the server; it backs off and keeps going.
//! - On shutdown the listener closes first, then every connection stops after its current
//!   command (replies already computed are flushed), and `serve` returns once all connection
//!   tasks are done or `shutdown_grace` has passed (stragglers are aborted).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::backend::KvBackend;
use super::command::{Command, Session};
use super::connection::{Connection, ReadError};
use super::CONNECTIONS_MAX;

/// The reply to a client over the connection limit (Redis's wording).
const MAX_CLIENTS_REPLY: &[u8] = b"-ERR max number of clients reached\r\n";

/// Rejected connections being closed politely at once; past this they are just dropped.
const REJECTIONS_IN_FLIGHT_MAX: usize = 64;

/// How long a rejected client gets to read its error before the socket closes.
const REJECTION_LINGER: Duration = Duration::from_secs(1);

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Tunables for [`serve_with_config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Connections served at once; more are refused.
    pub connections_max: usize,
    /// How long shutdown waits for connections to finish their current command.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { connections_max: CONNECTIONS_MAX, shutdown_grace: Duration::from_secs(5) }
    }
}

/// Serves RESP clients on `listener` until `shutdown` completes, with default limits.
pub async fn serve(
    listener: TcpListener,
    backend: Arc<dyn KvBackend>,
    shutdown: impl Future,
) -> io::Result<()> {
    serve_with_config(listener, backend, ServerConfig::default(), shutdown).await
}

/// Serves RESP clients on `listener` until `shutdown` completes.
pub async fn serve_with_config(
    listener: TcpListener,
    backend: Arc<dyn KvBackend>,
    config: ServerConfig,
    shutdown: impl Future,
) -> io::Result<()> {
    if config.connections_max == 0 || config.connections_max > Semaphore::MAX_PERMITS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connections_max must be in 1..=MAX_PERMITS",
        ));
    }
    let permits = Arc::new(Semaphore::new(config.connections_max));
    let rejections = Arc::new(Semaphore::new(REJECTIONS_IN_FLIGHT_MAX));
    let (stop_sender, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut next_id: u64 = 1;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    tracing::info!(addr = ?listener.local_addr().ok(), "RESP gateway listening");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connection tasks so the set does not grow with every client ever seen.
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = finished {
                    if error.is_panic() {
                        tracing::error!(%error, "RESP connection task panicked");
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                        reject(stream, peer, &rejections);
                        continue;
                    };
                    let id = next_id;
                    next_id += 1;
                    metrics::counter!("flotilla_resp_connections_accepted_total").increment(1);
                    let span = tracing::debug_span!("resp_connection", id, %peer);
                    let task = handle_connection(stream, id, Arc::clone(&backend), stop.clone(), permit);
                    connections.spawn(task.instrument(span));
                }
                Err(error) => {
                    // Usually out of file descriptors: wait for connections to close.
                    tracing::warn!(%error, ?backoff, "RESP accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            },
        }
    }
    drop(listener);
    // Receivers may all be gone already; nothing to tell them then.
    let _ = stop_sender.send(true);
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(remaining = connections.len(), "RESP shutdown grace passed; aborting connections");
        connections.shutdown().await;
    }
    tracing::info!("RESP gateway stopped");
    Ok(())
}

/// Tells a client over the limit why, then closes. Done in a task with a deadline, because the
/// write may have to wait for the socket, and the client should get to read the error before
/// our close could reset the connection. Bounded by `REJECTIONS_IN_FLIGHT_MAX`: in a flood,
/// extra connections are just dropped.
fn reject(stream: TcpStream, peer: SocketAddr, rejections: &Arc<Semaphore>) {
    metrics::counter!("flotilla_resp_connections_rejected_total").increment(1);
    tracing::debug!(%peer, "RESP connection refused: max number of clients reached");
    let Ok(permit) = Arc::clone(rejections).try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::time::timeout(REJECTION_LINGER, async {
            stream.write_all(MAX_CLIENTS_REPLY).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 512];
            while stream.read(&mut sink).await? > 0 {}
            io::Result::Ok(())
        })
        .await;
        drop(permit);
    });
}

/// Decrements the open-connections gauge however the task ends.
struct OpenGauge;

impl OpenGauge {
    fn open() -> OpenGauge {
        metrics::gauge!("flotilla_resp_connections_open").increment(1.0);
        OpenGauge
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        metrics::gauge!("flotilla_resp_connections_open").decrement(1.0);
    }
}

/// Serves one client until it quits, hangs up, sends garbage, or the server stops.
async fn handle_connection(
    stream: TcpStream,
    id: u64,
    backend: Arc<dyn KvBackend>,
    mut stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let _gauge = OpenGauge::open();
    // Replies are small and latency matters more than packet count; pipelining batches anyway.
    let _ = stream.set_nodelay(true);
    let mut connection = Connection::new(stream);
    let mut session = Session::new(id);
    tracing::debug!("RESP connection open");
    loop {
        let read = tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => break,
            read = connection.read_frame() => read,
        };
        let frame = match read {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(ReadError::Protocol(error)) => {
                metrics::counter!("flotilla_resp_protocol_errors_total").increment(1);
                tracing::debug!(%error, "RESP protocol error; closing");
                let _ = connection.write_frame(&error.to_frame()).await;
                break;
            }
            Err(ReadError::Io(error)) => {
                tracing::debug!(%error, "RESP read failed");
                return;
            }
        };
        let (reply, close) = match Command::from_frame(frame) {
            Ok(command) => {
                metrics::counter!("flotilla_resp_commands_total", "command" => command.name()).increment(1);
                let close = command.closes_connection();
                (command.execute(backend.as_ref(), &mut session).await, close)
            }
            Err(error) => {
                metrics::counter!("flotilla_resp_commands_total", "command" => "rejected").increment(1);
                (error.to_frame(), false)
            }
        };
        if let Err(error) = connection.write_frame(&reply).await {
            tracing::debug!(%error, "RESP write failed");
            return;
        }
        if close {
            break;
        }
    }
    if connection.flush().await.is_ok() {
        let _ = connection.stream_mut().shutdown().await;
    }
    tracing::debug!("RESP connection closed");
}
