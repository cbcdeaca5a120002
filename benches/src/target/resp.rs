//! `resp://`: Flotilla's RESP gateway or any Redis, spoken by a minimal RESP2 client.
//!
//! One TCP connection per client, one request in flight on it (no pipelining), as a plain Redis
//! client would. GET and SET only: RESP has no ordered range scan, so scan workloads refuse this
//! target before they start.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{Connection, Target};
use crate::workload::OpKind;

/// Longest reply line (status, error, length header) accepted.
const LINE_BYTES_MAX: usize = 64 << 10;
/// Largest bulk reply accepted.
const BULK_BYTES_MAX: usize = 64 << 20;
/// How long one connect attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct RespTarget {
    addrs: Vec<String>,
}

impl RespTarget {
    pub fn new(addrs: Vec<String>) -> RespTarget {
        assert!(!addrs.is_empty(), "a resp target needs an address");
        RespTarget { addrs }
    }
}

impl Target for RespTarget {
    type Conn = RespConnection;

    fn supports(&self, kind: OpKind) -> bool {
        kind != OpKind::Scan
    }

    fn connect(&self, client: usize) -> impl Future<Output = Result<RespConnection>> + Send {
        let mut conn =
            RespConnection { addrs: self.addrs.clone(), next_addr: client % self.addrs.len(), stream: None };
        async move {
            conn.ensure_connected().await?;
            Ok(conn)
        }
    }
}

/// One RESP connection; reconnects (to the next address on failure) when its socket broke or
/// an op on it was cancelled mid-flight.
#[derive(Debug)]
pub struct RespConnection {
    addrs: Vec<String>,
    next_addr: usize,
    /// `None` after an error or a cancelled request: the next call reconnects.
    stream: Option<BufReader<TcpStream>>,
}

/// A decoded reply (arrays are read and dropped: GET and SET never return one).
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(usize),
}

impl RespConnection {
    async fn ensure_connected(&mut self) -> Result<()> {
        if self.stream.is_some() {
            return Ok(());
        }
        let mut last_error = None;
        for attempt in 0..self.addrs.len() {
            let addr = &self.addrs[(self.next_addr + attempt) % self.addrs.len()];
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str())).await {
                Ok(Ok(stream)) => {
                    stream.set_nodelay(true)?;
                    self.next_addr = (self.next_addr + attempt) % self.addrs.len();
                    self.stream = Some(BufReader::with_capacity(16 << 10, stream));
                    return Ok(());
                }
                Ok(Err(e)) => last_error = Some(anyhow!(e).context(format!("connect {addr}"))),
                Err(_) => last_error = Some(anyhow!("connect {addr}: timed out")),
            }
        }
        // Next time start from the address after the one tried first.
        self.next_addr = (self.next_addr + 1) % self.addrs.len();
        Err(last_error.unwrap_or_else(|| anyhow!("no address")))
    }

    /// Sends one command and reads its reply. The stream is taken out while the request is in
    /// flight, so a cancelled call leaves `None` behind and the next one reconnects.
    pub async fn command(&mut self, args: &[&[u8]]) -> Result<Reply> {
        self.ensure_connected().await?;
        let mut stream = self.stream.take().expect("connected");
        let mut request = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        encode_command(&mut request, args);
        stream.get_mut().write_all(&request).await.context("send")?;
        let reply = read_reply(&mut stream).await?;
        self.stream = Some(stream);
        match reply {
            Err(message) => bail!("server error: {message}"),
            Ok(reply) => Ok(reply),
        }
    }
}

impl Connection for RespConnection {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.command(&[b"GET", key]).await? {
            Reply::Bulk(value) => Ok(value),
            other => bail!("GET: unexpected reply {other:?}"),
        }
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        match self.command(&[b"SET", key, value]).await? {
            Reply::Status(s) if s == "OK" => Ok(()),
            other => bail!("SET: unexpected reply {other:?}"),
        }
    }

    async fn scan(&mut self, _start: &[u8], _limit: usize) -> Result<usize> {
        bail!("resp:// has no ordered range scan")
    }
}

/// Appends a RESP array of bulk strings.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads one reply: `Ok(Err(message))` is a server error (`-ERR ...`), the outer error an I/O or
/// protocol failure.
pub async fn read_reply<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
) -> Result<std::result::Result<Reply, String>> {
    let line = read_line(reader).await?;
    let (kind, rest) = line.split_first().ok_or_else(|| anyhow!("empty reply line"))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    let number =
        || -> Result<i64> { text().parse::<i64>().with_context(|| format!("bad number {:?}", text())) };
    Ok(Ok(match kind {
        b'+' => Reply::Status(text()),
        b'-' => return Ok(Err(text())),
        b':' => Reply::Integer(number()?),
        b'$' => {
            let len = number()?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let len = usize::try_from(len)?;
                if len > BULK_BYTES_MAX {
                    bail!("bulk reply of {len} bytes exceeds {BULK_BYTES_MAX}");
                }
                let mut value = vec![0; len + 2];
                reader.read_exact(&mut value).await.context("read bulk")?;
                if !value.ends_with(b"\r\n") {
                    bail!("bulk reply not terminated by CRLF");
                }
                value.truncate(len);
                Reply::Bulk(Some(value))
            }
        }
        b'*' => {
            let count = number()?.max(0) as usize;
            for _ in 0..count {
                Box::pin(read_reply(reader)).await?.map_err(|e| anyhow!("error inside array: {e}"))?;
            }
            Reply::Array(count)
        }
        other => bail!("unknown reply type byte {other:#04x}"),
    }))
}

async fn read_line<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> Result<Vec<u8>> {
    let mut line = Vec::with_capacity(64);
    let n = (&mut *reader)
        .take(LINE_BYTES_MAX as u64)
        .read_until(b'\n', &mut line)
        .await
        .context("read reply")?;
    if n == 0 {
        bail!("connection closed by the server");
    }
    if !line.ends_with(b"\r\n") {
        bail!("reply line not terminated by CRLF (or longer than {LINE_BYTES_MAX} bytes)");
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<std::result::Result<Reply, String>> {
        let mut reader = BufReader::new(bytes);
        read_reply(&mut reader).await
    }

    #[tokio::test]
    async fn replies_decode() {
        assert_eq!(parse(b"+OK\r\n").await.unwrap(), Ok(Reply::Status("OK".into())));
        assert_eq!(parse(b"-ERR no\r\n").await.unwrap(), Err("ERR no".into()));
        assert_eq!(parse(b":42\r\n").await.unwrap(), Ok(Reply::Integer(42)));
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Ok(Reply::Bulk(None)));
        assert_eq!(parse(b"$3\r\na\r\n\r\n").await.unwrap(), Ok(Reply::Bulk(Some(b"a\r\n".to_vec()))));
        assert_eq!(parse(b"*2\r\n$1\r\nx\r\n:1\r\n").await.unwrap(), Ok(Reply::Array(2)));
        assert!(parse(b"$5\r\nab").await.is_err());
        assert!(parse(b"?x\r\n").await.is_err());
        assert!(parse(b"").await.is_err());
    }

    #[test]
    fn commands_encode_as_bulk_arrays() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }
}
