//! One client connection: frames in, replies out.
//!
//! Pipelining falls out of two rules. Replies are appended to an output buffer in the order
//! commands finish (one at a time, so that is request order), and the buffer is flushed only when
//! (a) no complete request is left in the input, just before blocking on the socket for more, or
//! (b) it passes `OUTPUT_FLUSH_BYTES`. A client that writes 1,000 commands at once thus gets its
//! replies in a few large writes, and a client that waits for each reply never waits on a buffer.
//!
//! Invariants:
//! - The connection reads from the socket only when the parser needs more bytes, so a client
//!   that does not read its replies stops being read from (TCP backpressure) instead of growing
//!   our buffers.
//! - Input held is at most one partial token plus one read; output held is at most
//!   `OUTPUT_FLUSH_BYTES` plus one reply (itself bounded by `REPLY_BYTES_MAX`).

use std::io;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::frame::{Frame, InputBuffer, Parsed, Parser, ProtocolError};

/// Output is written to the socket once this much is buffered, even mid-pipeline.
const OUTPUT_FLUSH_BYTES: usize = 64 * 1024;

/// An output buffer this large is given back after a flush (a big MGET went through).
const OUTPUT_CAPACITY_BYTES_MAX: usize = 1024 * 1024;

/// Why no frame could be read.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// A client socket with its input buffer, request parser and output buffer.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    input: InputBuffer,
    parser: Parser,
    output: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Connection<S> {
        Connection { stream, input: InputBuffer::new(), parser: Parser::request(), output: Vec::new() }
    }

    /// The next request frame; `Ok(None)` when the client closed the connection between
    /// requests. Flushes buffered replies before waiting on the socket.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Parsed::Frame(frame) = self.parser.parse(&mut self.input)? {
                return Ok(Some(frame));
            }
            self.flush().await?;
            if self.input.read_from(&mut self.stream).await? == 0 {
                // Half a request at end of stream is worth a log line, not a reply: nobody reads.
                if self.parser.in_progress() || !self.input.is_empty() {
                    return Err(ProtocolError::UnexpectedEof.into());
                }
                return Ok(None);
            }
        }
    }

    /// Buffers a reply; writes the buffer out if it has grown past `OUTPUT_FLUSH_BYTES`.
    pub async fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        frame.encode(&mut self.output);
        if self.output.len() >= OUTPUT_FLUSH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes every buffered reply to the socket.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.output).await?;
        self.stream.flush().await?;
        self.output.clear();
        if self.output.capacity() > OUTPUT_CAPACITY_BYTES_MAX {
            self.output.shrink_to(OUTPUT_FLUSH_BYTES);
        }
        Ok(())
    }

    /// The underlying stream, e.g. to shut it down.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reads_pipelined_frames_and_flushes_before_waiting() {
        let (client, server) = tokio::io::duplex(1024);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let mut connection = Connection::new(server);
        client_write.write_all(b"PING\r\n*1\r\n$4\r\nPING\r\n").await.ok();
        for _ in 0..2 {
            let frame = connection.read_frame().await.ok().flatten();
            assert_eq!(frame, Some(Frame::Array(vec![Frame::bulk("PING")])));
            connection.write_frame(&Frame::Simple("PONG".into())).await.ok();
        }
        // The next read finds no request, so both replies go out before it blocks.
        let reader = tokio::spawn(async move {
            let mut replies = [0u8; 14];
            client_read.read_exact(&mut replies).await.map(|_| replies)
        });
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(200), connection.read_frame()).await;
        assert!(pending.is_err(), "no request was sent");
        assert_eq!(
            reader.await.ok().and_then(Result::ok).as_ref().map(|r| &r[..]),
            Some(&b"+PONG\r\n+PONG\r\n"[..])
        );
        drop(client_write);
    }

    #[tokio::test]
    async fn eof_between_requests_is_clean_and_mid_request_is_not() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut connection = Connection::new(server);
        client.write_all(b"*1\r\n$4\r\nPI").await.ok();
        drop(client);
        assert!(matches!(
            connection.read_frame().await,
            Err(ReadError::Protocol(ProtocolError::UnexpectedEof))
        ));

        let (client, server) = tokio::io::duplex(1024);
        let mut connection = Connection::new(server);
        drop(client);
        assert!(matches!(connection.read_frame().await, Ok(None)));
    }
}
