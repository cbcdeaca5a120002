//! End-to-end tests of the RESP gateway: `serve` on 127.0.0.1 over a `MemBackend`, driven with
//! raw RESP over a `TcpStream` (no Redis client needed).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use flotilla_router::resp::{
    serve, serve_with_config, Frame, InputBuffer, MemBackend, Parsed, Parser, ServerConfig, VALUE_BYTES_MAX,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every read in these tests gives up after this long, so a bug shows as a failure, not a hang.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A running gateway; dropping `stop` (or sending on it) shuts it down.
struct Gateway {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(config: Option<ServerConfig>) -> Result<Gateway> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let backend = Arc::new(MemBackend::new());
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let task = match config {
        None => tokio::spawn(serve(listener, backend, shutdown)),
        Some(config) => tokio::spawn(serve_with_config(listener, backend, config, shutdown)),
    };
    Ok(Gateway { addr, stop, task })
}

impl Gateway {
    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(READ_TIMEOUT, self.task).await.context("serve did not stop")???;
        Ok(())
    }
}

/// A bare-bones Redis client: encodes commands as arrays of bulk strings, parses replies.
struct Client {
    stream: TcpStream,
    input: InputBuffer,
    parser: Parser,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Client> {
        Ok(Client {
            stream: TcpStream::connect(addr).await?,
            input: InputBuffer::new(),
            parser: Parser::reply(),
        })
    }

    fn encode(words: &[&[u8]]) -> Vec<u8> {
        Frame::Array(words.iter().map(|word| Frame::bulk(*word)).collect()).to_bytes()
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    async fn reply(&mut self) -> Result<Frame> {
        tokio::time::timeout(READ_TIMEOUT, async {
            loop {
                if let Parsed::Frame(frame) = self.parser.parse(&mut self.input)? {
                    return Ok(frame);
                }
                if self.input.read_from(&mut self.stream).await? == 0 {
                    bail!("connection closed while waiting for a reply");
                }
            }
        })
        .await
        .context("timed out waiting for a reply")?
    }

    async fn call(&mut self, words: &[&str]) -> Result<Frame> {
        let words: Vec<&[u8]> = words.iter().map(|word| word.as_bytes()).collect();
        self.send_raw(&Client::encode(&words)).await?;
        self.reply().await
    }

    /// True when the server closed the connection (after any already-parsed replies).
    async fn closed(&mut self) -> Result<bool> {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut byte)).await?;
        Ok(matches!(read, Ok(0) | Err(_)))
    }
}

fn bulk(text: &str) -> Frame {
    Frame::bulk(text)
}

fn error(line: &str) -> Frame {
    Frame::Error(line.to_owned())
}

fn text(frame: &Frame) -> Result<String> {
    match frame {
        Frame::Bulk(bytes) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        other => Err(anyhow!("expected a bulk string, got {other:?}")),
    }
}

#[tokio::test]
async fn string_commands() -> Result<()> {
    let gateway = start(None).await?;
    let mut client = Client::connect(gateway.addr).await?;

    assert_eq!(client.call(&["PING"]).await?, Frame::Simple("PONG".into()));
    assert_eq!(client.call(&["ping", "hello"]).await?, bulk("hello"));
    assert_eq!(client.call(&["ECHO", "x y"]).await?, bulk("x y"));

    assert_eq!(client.call(&["GET", "k"]).await?, Frame::NullBulk);
    assert_eq!(client.call(&["SET", "k", "v1"]).await?, Frame::ok());
    assert_eq!(client.call(&["GET", "k"]).await?, bulk("v1"));
    assert_eq!(client.call(&["SET", "k", "v2", "NX"]).await?, Frame::NullBulk);
    assert_eq!(client.call(&["SET", "other", "v", "XX"]).await?, Frame::NullBulk);
    assert_eq!(client.call(&["GET", "other"]).await?, Frame::NullBulk);
    assert_eq!(client.call(&["set", "k", "v3", "xx"]).await?, Frame::ok());
    assert_eq!(client.call(&["SET", "new", "n", "nx"]).await?, Frame::ok());
    assert_eq!(client.call(&["GET", "k"]).await?, bulk("v3"));
    assert_eq!(client.call(&["SET", "k", "v", "NX", "XX"]).await?, error("ERR syntax error"));
    assert_eq!(client.call(&["SETNX", "k", "v"]).await?, Frame::Integer(0));

    assert_eq!(client.call(&["EXISTS", "k", "new", "missing", "k"]).await?, Frame::Integer(3));
    assert_eq!(client.call(&["DEL", "k", "missing"]).await?, Frame::Integer(1));
    assert_eq!(client.call(&["EXISTS", "k"]).await?, Frame::Integer(0));

    assert_eq!(client.call(&["MSET", "a", "1", "b", "2", "c", "3"]).await?, Frame::ok());
    assert_eq!(
        client.call(&["MGET", "a", "nope", "c"]).await?,
        Frame::Array(vec![bulk("1"), Frame::NullBulk, bulk("3")])
    );
    assert_eq!(
        client.call(&["MSET", "a", "1", "b"]).await?,
        error("ERR wrong number of arguments for 'mset' command")
    );

    assert_eq!(client.call(&["INCR", "a"]).await?, Frame::Integer(2));
    assert_eq!(client.call(&["INCRBY", "a", "40"]).await?, Frame::Integer(42));
    assert_eq!(client.call(&["DECR", "a"]).await?, Frame::Integer(41));
    assert_eq!(client.call(&["DECRBY", "a", "-9"]).await?, Frame::Integer(50));
    assert_eq!(client.call(&["INCR", "fresh"]).await?, Frame::Integer(1));
    assert_eq!(client.call(&["APPEND", "new", "abc"]).await?, Frame::Integer(4));
    assert_eq!(client.call(&["GET", "new"]).await?, bulk("nabc"));
    assert_eq!(client.call(&["STRLEN", "new"]).await?, Frame::Integer(4));
    assert_eq!(client.call(&["INCR", "new"]).await?, error("ERR value is not an integer or out of range"));
    assert_eq!(
        client.call(&["INCRBY", "a", "x"]).await?,
        error("ERR value is not an integer or out of range")
    );

    assert_eq!(client.call(&["GET"]).await?, error("ERR wrong number of arguments for 'get' command"));
    gateway.stop().await
}

#[tokio::test]
async fn unsupported_and_unknown_commands_get_errors_not_hangs() -> Result<()> {
    let gateway = start(None).await?;
    let mut client = Client::connect(gateway.addr).await?;
    assert_eq!(
        client.call(&["SET", "k", "v", "EX", "10"]).await?,
        error("ERR expiry options are not supported by flotilla (keys never expire)")
    );
    assert_eq!(
        client.call(&["FLUSHALL", "ASYNC"]).await?,
        error("ERR unknown command 'FLUSHALL', with args beginning with: 'ASYNC' ")
    );
    assert_eq!(client.call(&["MULTI"]).await?, error("ERR MULTI/EXEC transactions are not supported yet"));
    assert_eq!(client.call(&["COMMAND", "DOCS"]).await?, Frame::Array(vec![]));
    assert_eq!(client.call(&["CLIENT", "SETNAME", "tests"]).await?, Frame::ok());
    assert_eq!(client.call(&["CLIENT", "GETNAME"]).await?, bulk("tests"));
    assert_eq!(client.call(&["CLIENT", "SETINFO", "lib-name", "raw"]).await?, Frame::ok());
    assert_eq!(client.call(&["SELECT", "0"]).await?, Frame::ok());
    assert_eq!(client.call(&["SELECT", "3"]).await?, error("ERR DB index is out of range"));
    assert_eq!(client.call(&["HELLO", "3"]).await?, error("NOPROTO unsupported protocol version"));
    let Frame::Array(hello) = client.call(&["HELLO", "2"]).await? else { bail!("HELLO 2 is an array") };
    assert_eq!(hello.get(5), Some(&Frame::Integer(2)));
    // Still connected and serving after all of that.
    assert_eq!(client.call(&["PING"]).await?, Frame::Simple("PONG".into()));
    gateway.stop().await
}

#[tokio::test]
async fn info_has_server_and_flotilla_sections() -> Result<()> {
    let gateway = start(None).await?;
    let mut client = Client::connect(gateway.addr).await?;
    client.call(&["SET", "k", "v"]).await?;
    let info = text(&client.call(&["INFO"]).await?)?;
    assert!(info.starts_with("# Server\r\n"), "{info}");
    assert!(info.contains("redis_version:7.0.0-flotilla-compatible\r\n"), "{info}");
    assert!(info.contains("\r\n# Flotilla\r\nrole:memory\r\nkeys:1\r\n"), "{info}");
    let server_only = text(&client.call(&["INFO", "server"]).await?)?;
    assert!(!server_only.contains("# Flotilla"), "{server_only}");
    gateway.stop().await
}

#[tokio::test]
async fn scan_returns_every_key_exactly_once() -> Result<()> {
    let gateway = start(None).await?;
    let mut client = Client::connect(gateway.addr).await?;
    let keys: Vec<String> = (0..2500).map(|i| format!("key:{i:05}")).collect();
    for chunk in keys.chunks(500) {
        let mut words = vec!["MSET"];
        for key in chunk {
            words.extend([key.as_str(), "v"]);
        }
        assert_eq!(client.call(&words).await?, Frame::ok());
    }
    // Keys outside the MATCH prefix, to check the range narrowing.
    client.call(&["MSET", "a", "1", "zzz", "2"]).await?;

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut cursor = "0".to_owned();
    let mut calls = 0;
    loop {
        let reply = client.call(&["SCAN", &cursor, "MATCH", "key:*", "COUNT", "100"]).await?;
        let Frame::Array(parts) = reply else { bail!("SCAN reply {reply:?}") };
        let [next, Frame::Array(page)] = parts.as_slice() else { bail!("SCAN reply shape {parts:?}") };
        assert!(page.len() <= 100);
        for key in page {
            *seen.entry(text(key)?).or_default() += 1;
        }
        cursor = text(next)?;
        calls += 1;
        assert!(calls <= 30, "SCAN did not finish");
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 2500);
    assert!(seen.values().all(|&count| count == 1), "a key came back twice");
    assert!(seen.keys().eq(keys.iter()));

    // A plain full iteration sees the other keys too.
    let mut total = 0;
    let mut cursor = "0".to_owned();
    loop {
        let Frame::Array(parts) = client.call(&["scan", &cursor, "count", "1000"]).await? else {
            bail!("SCAN")
        };
        let [next, Frame::Array(page)] = parts.as_slice() else { bail!("SCAN shape") };
        total += page.len();
        cursor = text(next)?;
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(total, 2502);
    gateway.stop().await
}

#[tokio::test]
async fn thousand_pipelined_commands_are_answered_in_order() -> Result<()> {
    let gateway = start(None).await?;
    let mut client = Client::connect(gateway.addr).await?;
    let mut batch = Vec::new();
    for i in 0..1000 {
        let command = match i % 4 {
            0 => Client::encode(&[b"INCR", b"counter"]),
            1 => Client::encode(&[b"SET", format!("p{i}").as_bytes(), format!("{i}").as_bytes()]),
            2 => Client::encode(&[b"GET", format!("p{}", i - 1).as_bytes()]),
            _ => b"PING\r\n".to_vec(),
        };
        batch.extend_from_slice(&command);
    }
    client.send_raw(&batch).await?;
    for i in 0..1000 {
        let expected = match i % 4 {
            0 => Frame::Integer(i / 4 + 1),
            1 => Frame::ok(),
            2 => Frame::bulk(format!("{}", i - 1)),
            _ => Frame::Simple("PONG".into()),
        };
        assert_eq!(client.reply().await?, expected, "reply {i}");
    }
    gateway.stop().await
}

#[tokio::test]
async fn inline_commands_and_byte_at_a_time_requests() -> Result<()> {
    let gateway = start(None).await?;
    let mut client = Client::connect(gateway.addr).await?;
    client.send_raw(b"PING\r\n").await?;
    assert_eq!(client.reply().await?, Frame::Simple("PONG".into()));
    client.send_raw(b"set greeting \"hello world\"\n").await?;
    assert_eq!(client.reply().await?, Frame::ok());
    for &byte in Client::encode(&[b"GET", b"greeting"]).iter() {
        client.send_raw(&[byte]).await?;
        client.stream.flush().await?;
    }
    assert_eq!(client.reply().await?, bulk("hello world"));
    gateway.stop().await
}

#[tokio::test]
async fn large_values_round_trip_and_oversized_ones_are_refused() -> Result<()> {
    let gateway = start(None).await?;
    let mut client = Client::connect(gateway.addr).await?;
    let big = vec![b'x'; 1024 * 1024];
    client.send_raw(&Client::encode(&[b"SET", b"big", &big])).await?;
    assert_eq!(client.reply().await?, Frame::ok());
    assert_eq!(client.call(&["GET", "big"]).await?, Frame::Bulk(big));
    let too_big = vec![b'y'; VALUE_BYTES_MAX + 1];
    client.send_raw(&Client::encode(&[b"SET", b"huge", &too_big])).await?;
    assert_eq!(
        client.reply().await?,
        error(&format!("ERR value exceeds maximum allowed size of {VALUE_BYTES_MAX} bytes"))
    );
    // The connection survives a refused value.
    assert_eq!(client.call(&["EXISTS", "huge"]).await?, Frame::Integer(0));
    gateway.stop().await
}

#[tokio::test]
async fn quit_answers_ok_then_closes() -> Result<()> {
    let gateway = start(None).await?;
    let mut client = Client::connect(gateway.addr).await?;
    assert_eq!(client.call(&["QUIT"]).await?, Frame::ok());
    assert!(client.closed().await?);
    gateway.stop().await
}

#[tokio::test]
async fn protocol_errors_answer_then_close() -> Result<()> {
    let gateway = start(None).await?;
    let mut client = Client::connect(gateway.addr).await?;
    client.send_raw(b"*1\r\n$4\r\nPING\r\n*1\r\n:12\r\n").await?;
    assert_eq!(client.reply().await?, Frame::Simple("PONG".into()));
    assert_eq!(client.reply().await?, error("ERR Protocol error: expected '$', got ':'"));
    assert!(client.closed().await?);

    let mut client = Client::connect(gateway.addr).await?;
    client.send_raw(b"*1\r\n$999999999999\r\n").await?;
    assert_eq!(client.reply().await?, error("ERR Protocol error: invalid bulk length"));
    assert!(client.closed().await?);
    gateway.stop().await
}

#[tokio::test]
async fn connections_over_the_limit_are_refused() -> Result<()> {
    let config = ServerConfig { connections_max: 2, ..ServerConfig::default() };
    let gateway = start(Some(config)).await?;
    let mut first = Client::connect(gateway.addr).await?;
    let mut second = Client::connect(gateway.addr).await?;
    // Make sure both are accepted before the third arrives.
    assert_eq!(first.call(&["PING"]).await?, Frame::Simple("PONG".into()));
    assert_eq!(second.call(&["PING"]).await?, Frame::Simple("PONG".into()));
    let mut third = Client::connect(gateway.addr).await?;
    assert_eq!(third.reply().await?, error("ERR max number of clients reached"));
    assert!(third.closed().await?);

    // A slot frees up once a client leaves.
    assert_eq!(first.call(&["QUIT"]).await?, Frame::ok());
    assert!(first.closed().await?);
    let mut attempts = 0;
    loop {
        let mut fourth = Client::connect(gateway.addr).await?;
        match fourth.call(&["PING"]).await {
            Ok(reply) if reply == Frame::Simple("PONG".into()) => break,
            _ if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => bail!("no slot after a client left: {other:?}"),
        }
    }
    gateway.stop().await
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_returns() -> Result<()> {
    let gateway = start(None).await?;
    let mut client = Client::connect(gateway.addr).await?;
    assert_eq!(client.call(&["SET", "k", "v"]).await?, Frame::ok());
    let addr = gateway.addr;
    gateway.stop().await?;
    assert!(client.closed().await?);
    assert!(TcpStream::connect(addr).await.is_err(), "listener still open after shutdown");
    Ok(())
}
