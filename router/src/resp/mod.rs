//! The RESP (Redis serialization protocol, version 2) gateway: lets Redis clients talk to Flotilla.
//!
//! Layering follows mini-redis, one job per module, each depending only on the ones above it:
//!
//! - [`frame`]: RESP2 values and a bounded, incremental parser (bytes → [`Frame`]).
//! - [`connection`]: one client socket; reads frames, buffers and flushes replies (pipelining).
//! - [`command`]: turns a request frame into a [`Command`] and executes it against a [`KvBackend`].
//! - [`backend`]: the small trait the node implements, plus [`MemBackend`] for tests.
//! - [`server`]: the accept loop, the connection limit and graceful shutdown.
//! - [`glob`]: Redis-style pattern matching for `SCAN ... MATCH`.
//!
//! Invariants the whole gateway keeps:
//! - Every limit is a named constant below, with its unit last; nothing a client sends can make a
//!   connection hold more than about `REQUEST_BYTES_MAX` of parsed input plus `REPLY_BYTES_MAX` of
//!   pending output.
//! - Client input never panics the gateway: malformed protocol gets `-ERR Protocol error: ...` and
//!   the connection is closed (what Redis does); a well-formed but wrong command gets a Redis-style
//!   `-ERR ...` reply and the connection stays open.
//! - Replies leave in request order, one per request.

pub mod backend;
pub mod command;
pub mod connection;
pub mod frame;
pub mod glob;
pub mod server;

pub use backend::{BackendError, BoxFuture, KvBackend, MemBackend, ScanPage, SetCondition};
pub use command::{Command, ReplyError, Session};
pub use connection::Connection;
pub use frame::{Frame, FrameLimits, InputBuffer, Parsed, Parser, ProtocolError};
pub use server::{serve, serve_with_config, ServerConfig};

/// Largest request (one top-level frame, header bytes included) a client may send. Redis allows
/// 512 MiB; we keep a tighter bound because values are capped at `VALUE_BYTES_MAX` anyway.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Largest bulk string the parser accepts. Above `VALUE_BYTES_MAX` on purpose: a value that is a
/// little too large gets a polite `-ERR` from the command layer instead of a protocol error and a
/// closed connection.
pub const BULK_BYTES_MAX: usize = 2 * VALUE_BYTES_MAX;

/// Most elements in one request (Redis's multibulk limit is about the same order).
pub const ARRAY_ELEMENTS_MAX: usize = 1024 * 1024;

/// Longest inline command (`PING\r\n` typed into telnet) and longest simple-string line; Redis
/// uses the same 64 KiB.
pub const INLINE_BYTES_MAX: usize = 64 * 1024;

/// Deepest array nesting the parser accepts. Requests are flat; replies nest a little (SCAN).
pub const NESTING_DEPTH_MAX: usize = 8;

/// Largest key a command accepts.
pub const KEY_BYTES_MAX: usize = 64 * 1024;

/// Largest value a command accepts (and the largest APPEND result `MemBackend` allows).
pub const VALUE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Largest reply one command may build (MGET of many large values); past it the command answers
/// an error instead of growing the output buffer without bound.
pub const REPLY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Default cap on concurrently open client connections; see [`ServerConfig`].
pub const CONNECTIONS_MAX: usize = 1024;

/// SCAN's page size when the client gives no COUNT (Redis's default too).
pub const SCAN_COUNT_DEFAULT: usize = 10;

/// Largest SCAN page; larger COUNTs are clamped so one call stays cheap for the cluster.
pub const SCAN_COUNT_MAX: usize = 1000;

/// Parses a decimal `i64` the way Redis's `string2ll` does: optional `-`, no `+`, no spaces, no
/// leading zeros, no overflow. Used for protocol headers and command arguments alike so that
/// "is this an integer" has one answer everywhere.
pub fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    match digits {
        [] => return None,
        [b'0'] => return if negative { None } else { Some(0) },
        [b'0', ..] => return None,
        _ => {}
    }
    // Accumulate as a negative number so that i64::MIN parses without overflow.
    let mut value: i64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_sub(i64::from(byte - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_integer;

    #[test]
    fn parse_integer_follows_redis_string2ll() {
        assert_eq!(parse_integer(b"0"), Some(0));
        assert_eq!(parse_integer(b"42"), Some(42));
        assert_eq!(parse_integer(b"-42"), Some(-42));
        assert_eq!(parse_integer(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_integer(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [&b""[..], b"-", b"+1", b" 1", b"1 ", b"01", b"-0", b"1.5", b"9223372036854775808", b"abc"]
        {
            assert_eq!(parse_integer(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
