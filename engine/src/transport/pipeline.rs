//! Pipelined requests: many requests on one long-lived bidirectional QUIC stream.
//!
//! Why: with one stream per request, every request opened a stream, sent its own packet,
//! received its answer in its own packet and closed the stream — per request, a few QUIC
//! frames of stream bookkeeping, a `sendmsg` on each side and flow-control updates. Under load
//! that was most of a node's network CPU. On one stream, requests issued together leave in one
//! write, and the node's answers ready together come back in one write (the node side is
//! `quic::serve_request`, which serves one-request streams the same way).
//!
//! Framing: `Request { id, payload }` frames out, `Response { id, result }` frames back, in the
//! order the answers are ready; the id pairs them. Ids are unique per pipeline.
//!
//! Failure: when the stream or its connection fails, every request waiting on it fails with
//! [`TransportError::Lost`] (it may have run) and the pipeline is dead: later requests fail at
//! once with [`TransportError::Unreachable`] (never sent), so the owner dials again.
//!
//! Invariants: every wait is bounded by the caller's deadline; `Unreachable` is only reported
//! for a request that was never queued for the stream (one queued when the stream fails is
//! `Lost`: its outcome is unknown, and it is never retried blindly).

#![allow(clippy::disallowed_methods)] // network I/O: tasks on the caller's tokio runtime

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::frame::{self, Frame, FrameError, Request};
use super::quic::{count_frame_error, PIPELINE_WRITE_BYTES_MAX};
use super::TransportError;
use crate::raft::NodeId;

/// Requests queued for the writer at most; a caller beyond it waits (within its deadline).
pub const PIPELINE_QUEUE_MAX: usize = 4_096;

type Answer = Result<Vec<u8>, TransportError>;

/// The requests waiting for answers, and why the pipeline died, if it did.
#[derive(Debug, Default)]
struct Waiting {
    answers: crate::ids::IntMap<u64, oneshot::Sender<Answer>>,
    dead: Option<String>,
}

/// The sending half of a pipeline; the reader and writer tasks run on the tokio runtime it
/// was started on. Dropping it finishes the stream once the queued requests are written.
#[derive(Debug)]
pub struct Pipeline {
    peer: NodeId,
    queue: mpsc::Sender<Vec<u8>>,
    waiting: Arc<Mutex<Waiting>>,
    next_id: AtomicU64,
}

impl Pipeline {
    /// Starts the writer and reader tasks for a stream just opened to `peer`.
    pub fn start(peer: NodeId, send: quinn::SendStream, recv: quinn::RecvStream) -> Pipeline {
        let (queue, requests) = mpsc::channel(PIPELINE_QUEUE_MAX);
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        tokio::spawn(write_requests(peer, send, requests, Arc::clone(&waiting)));
        tokio::spawn(read_answers(peer, recv, Arc::clone(&waiting)));
        Pipeline { peer, queue, waiting, next_id: AtomicU64::new(1) }
    }

    /// Whether the stream failed: the owner should dial again.
    pub fn is_dead(&self) -> bool {
        lock(&self.waiting).dead.is_some()
    }

    /// Sends one request and waits until `deadline` for its answer. `Unreachable` means it was
    /// never sent; `Timeout`, `Lost`, `Remote` and `Protocol` mean it may have run.
    pub async fn request(&self, payload: Vec<u8>, deadline: Instant, timeout: Duration) -> Answer {
        let peer = self.peer;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = frame::encode(&Request { id, payload })?;
        let (answer, answered) = oneshot::channel();
        {
            let mut waiting = lock(&self.waiting);
            if let Some(reason) = &waiting.dead {
                return Err(TransportError::Unreachable { peer, reason: reason.clone() });
            }
            waiting.answers.insert(id, answer);
        }
        // However this ends — answered, timed out, or the caller dropping this future — the
        // slot for the answer goes with it.
        let _forget = Forget { waiting: &self.waiting, id };
        match tokio::time::timeout_at(deadline, self.queue.send(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(TransportError::Unreachable { peer, reason: "request stream closed".into() });
            }
            Err(_) => {
                return Err(TransportError::Unreachable {
                    peer,
                    reason: format!("request queue full for {timeout:?}"),
                });
            }
        }
        match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(TransportError::Lost { peer, reason: "request stream closed".into() }),
            Err(_) => Err(TransportError::Timeout { peer, timeout }),
        }
    }
}

/// Removes a request's answer slot when dropped (a no-op once the answer was delivered).
struct Forget<'a> {
    waiting: &'a Mutex<Waiting>,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.waiting).answers.remove(&self.id);
    }
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Marks the pipeline dead and fails every waiting request with `error(reason)`.
fn fail_all(waiting: &Mutex<Waiting>, reason: String, error: impl Fn(String) -> TransportError) {
    let answers = {
        let mut waiting = lock(waiting);
        waiting.dead.get_or_insert_with(|| reason.clone());
        std::mem::take(&mut waiting.answers)
    };
    for (_, answer) in answers {
        let _ = answer.send(Err(error(reason.clone())));
    }
}

/// Writes queued requests, all that are queued in one write (up to `PIPELINE_WRITE_BYTES_MAX`).
async fn write_requests(
    peer: NodeId,
    mut send: quinn::SendStream,
    mut requests: mpsc::Receiver<Vec<u8>>,
    waiting: Arc<Mutex<Waiting>>,
) {
    let mut batch = Vec::new();
    while let Some(first) = requests.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < PIPELINE_WRITE_BYTES_MAX {
            match requests.try_recv() {
                Ok(bytes) => batch.extend_from_slice(&bytes),
                Err(_) => break,
            }
        }
        if let Err(e) = send.write_all(&batch).await {
            fail_all(&waiting, format!("request stream failed: {e}"), |reason| TransportError::Lost {
                peer,
                reason,
            });
            return;
        }
    }
    // The pipeline was dropped: no more requests. The node finishes its side after answering.
    let _ = send.finish();
}

/// Hands each answer to its request until the stream ends or breaks.
async fn read_answers(peer: NodeId, mut recv: quinn::RecvStream, waiting: Arc<Mutex<Waiting>>) {
    let lost = |reason| TransportError::Lost { peer, reason };
    loop {
        match frame::read_frame(&mut recv).await {
            Ok(Some(Frame::Response(response))) => {
                let answer = lock(&waiting).answers.remove(&response.id);
                // No one waiting: that request timed out and was forgotten.
                if let Some(answer) = answer {
                    let _ = answer
                        .send(response.result.map_err(|message| TransportError::Remote { peer, message }));
                }
            }
            Ok(Some(other)) => {
                count_frame_error(Some(peer));
                let reason = format!("expected responses, got a {:?} frame", other.kind());
                let _ = recv.stop(quinn::VarInt::from_u32(0));
                fail_all(&waiting, reason, |reason| TransportError::Protocol { peer, reason });
                return;
            }
            Ok(None) => {
                fail_all(&waiting, "request stream closed by the node".into(), lost);
                return;
            }
            Err(FrameError::Io(reason)) => {
                fail_all(&waiting, reason, lost);
                return;
            }
            Err(e) => {
                count_frame_error(Some(peer));
                fail_all(&waiting, e.to_string(), |reason| TransportError::Protocol { peer, reason });
                return;
            }
        }
    }
}
