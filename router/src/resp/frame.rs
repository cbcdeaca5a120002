//! RESP2 frames, their encoding, and a bounded incremental parser.
//!
//! The parser works over an [`InputBuffer`] that the connection appends socket reads to. Each call
//! to [`Parser::parse`] consumes every complete token it finds (a bulk string, an integer line, an
//! array header, an inline command) and keeps partially built arrays in its own stack, so a large
//! request that arrives in many reads is scanned once, not once per read. A bulk string is consumed
//! only when all of it, trailing CRLF included, is in the buffer.
//!
//! Two modes:
//! - [`Parser::request`] parses what a Redis client sends, with the server's rules: the top level
//!   is either a multibulk (`*<n>`, elements must be `$` bulk strings) or an inline command line
//!   (`PING\r\n`, split like `redis-cli`/`sdssplitargs`). Empty requests (`*0`, blank lines) are
//!   skipped, as Redis does.
//! - [`Parser::reply`] parses any RESP2 value (what a server sends), for tests and Rust clients.
//!
//! Invariants:
//! - Every length is checked against [`FrameLimits`] *before* anything is allocated for it, so
//!   memory held by one parse is bounded by `request_bytes_max` of input plus a constant per
//!   element (and `elements_max` bounds the elements).
//! - Array preallocation is capped at `PREALLOCATED_ELEMENTS_MAX`, so a 12-byte header claiming a
//!   million elements allocates nothing large.
//! - After an error the parser is in an unspecified state; callers close the connection.
//! - The encoder never emits CR or LF inside a simple string or error line (they become spaces),
//!   so a reply can never be split into two by its content.

use std::fmt;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{
    parse_integer, ARRAY_ELEMENTS_MAX, BULK_BYTES_MAX, INLINE_BYTES_MAX, NESTING_DEPTH_MAX, REQUEST_BYTES_MAX,
};

/// Array capacity reserved up front at most; the rest grows as elements actually arrive.
const PREALLOCATED_ELEMENTS_MAX: usize = 1024;

/// Longest `*<n>`, `$<n>` or `:<n>` line, CRLF excluded: an i64 is at most 20 characters.
const NUMBER_LINE_BYTES_MAX: usize = 32;

/// One RESP2 value.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    /// `+OK\r\n`
    Simple(String),
    /// `-ERR message\r\n`; the string holds the whole line after `-`, prefix word included.
    Error(String),
    /// `:42\r\n`
    Integer(i64),
    /// `$3\r\nfoo\r\n`
    Bulk(Vec<u8>),
    /// `$-1\r\n` (a missing key).
    NullBulk,
    /// `*2\r\n...`
    Array(Vec<Frame>),
    /// `*-1\r\n`
    NullArray,
}

impl Frame {
    /// The `+OK` reply.
    pub fn ok() -> Frame {
        Frame::Simple("OK".to_owned())
    }

    /// A bulk string from anything byte-like.
    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Frame {
        Frame::Bulk(bytes.into())
    }

    /// Appends the wire encoding of `self` to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Simple(line) => encode_line(out, b'+', line),
            Frame::Error(line) => encode_line(out, b'-', line),
            Frame::Integer(value) => {
                out.push(b':');
                push_decimal(out, *value);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Bulk(bytes) => {
                out.push(b'$');
                push_decimal(out, len_i64(bytes.len()));
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Frame::NullBulk => out.extend_from_slice(b"$-1\r\n"),
            Frame::Array(items) => {
                out.push(b'*');
                push_decimal(out, len_i64(items.len()));
                out.extend_from_slice(b"\r\n");
                for item in items {
                    item.encode(out);
                }
            }
            Frame::NullArray => out.extend_from_slice(b"*-1\r\n"),
        }
    }

    /// The wire encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// How many bytes [`Frame::encode`] will append; lets commands enforce `REPLY_BYTES_MAX`
    /// before building a reply.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Simple(line) | Frame::Error(line) => line.len() + 3,
            Frame::Integer(value) => decimal_len(*value) + 3,
            Frame::Bulk(bytes) => decimal_len(len_i64(bytes.len())) + bytes.len() + 5,
            Frame::NullBulk | Frame::NullArray => 5,
            Frame::Array(items) => {
                decimal_len(len_i64(items.len())) + 3 + items.iter().map(Frame::encoded_len).sum::<usize>()
            }
        }
    }
}

/// Debug shows bulk strings as text when they are, so test failures are readable.
impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Simple(line) => write!(f, "+{line:?}"),
            Frame::Error(line) => write!(f, "-{line:?}"),
            Frame::Integer(value) => write!(f, ":{value}"),
            Frame::Bulk(bytes) => write!(f, "${:?}", String::from_utf8_lossy(bytes)),
            Frame::NullBulk => write!(f, "$nil"),
            Frame::Array(items) => f.debug_list().entries(items).finish(),
            Frame::NullArray => write!(f, "*nil"),
        }
    }
}

fn encode_line(out: &mut Vec<u8>, tag: u8, line: &str) {
    out.push(tag);
    out.extend(line.bytes().map(|byte| if byte == b'\r' || byte == b'\n' { b' ' } else { byte }));
    out.extend_from_slice(b"\r\n");
}

/// Lengths come from in-memory vectors, so they always fit; saturate rather than panic anyway.
fn len_i64(len: usize) -> i64 {
    i64::try_from(len).unwrap_or(i64::MAX)
}

fn push_decimal(out: &mut Vec<u8>, value: i64) {
    let mut digits = [0u8; 20];
    let mut cursor = digits.len();
    let mut magnitude = value.unsigned_abs();
    loop {
        cursor -= 1;
        digits[cursor] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if value < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[cursor..]);
}

fn decimal_len(value: i64) -> usize {
    let sign = usize::from(value < 0);
    let mut magnitude = value.unsigned_abs();
    let mut digits = 1;
    while magnitude >= 10 {
        magnitude /= 10;
        digits += 1;
    }
    sign + digits
}

/// Malformed input. The message after `Protocol error: ` follows Redis's where Redis has one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("invalid integer")]
    InvalidInteger,
    #[error("expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    #[error("invalid RESP type byte '{}'", char::from(*.0))]
    InvalidTypeByte(u8),
    #[error("expected CRLF after bulk string")]
    MissingCrlf,
    #[error("too big inline request")]
    InlineTooLong,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("request exceeds {0} bytes")]
    RequestTooLarge(usize),
    #[error("request has more than {0} elements")]
    TooManyElements(usize),
    #[error("arrays nested deeper than {0}")]
    NestingTooDeep(usize),
    #[error("connection closed in the middle of a request")]
    UnexpectedEof,
}

impl ProtocolError {
    /// The reply Redis sends before closing the connection.
    pub fn to_frame(&self) -> Frame {
        Frame::Error(format!("ERR Protocol error: {self}"))
    }
}

/// Bounds one parse. Defaults are the crate-wide constants; tests shrink them to exercise the
/// limits cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub request_bytes_max: usize,
    pub bulk_bytes_max: usize,
    pub elements_max: usize,
    pub inline_bytes_max: usize,
    pub nesting_depth_max: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            request_bytes_max: REQUEST_BYTES_MAX,
            bulk_bytes_max: BULK_BYTES_MAX,
            elements_max: ARRAY_ELEMENTS_MAX,
            inline_bytes_max: INLINE_BYTES_MAX,
            nesting_depth_max: NESTING_DEPTH_MAX,
        }
    }
}

/// A growable byte buffer with a read cursor: bytes are appended at the end and consumed from the
/// front without moving the rest until the next read needs room (our `BytesMut`).
#[derive(Debug, Default)]
pub struct InputBuffer {
    bytes: Vec<u8>,
    /// Bytes before `start` are consumed.
    start: usize,
}

/// Room reserved for each socket read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// An idle buffer larger than this gives its memory back (after a large value went through).
const IDLE_CAPACITY_BYTES_MAX: usize = 256 * 1024;

impl InputBuffer {
    pub fn new() -> InputBuffer {
        InputBuffer::default()
    }

    /// The bytes not yet consumed.
    pub fn unparsed(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `n` more bytes consumed.
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.len(), "advance {n} past the {} unparsed bytes", self.len());
        self.start += n;
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.start = 0;
        }
    }

    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.compact();
        self.bytes.extend_from_slice(data);
    }

    /// One read from `reader` appended to the buffer; returns the bytes read (0 at end of stream).
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<usize> {
        self.compact();
        self.bytes.reserve(READ_CHUNK_BYTES);
        // `read_buf` fills spare capacity without zeroing it first.
        reader.read_buf(&mut self.bytes).await
    }

    /// Moves the unconsumed tail to the front. Called only before appending, and the tail is at
    /// most one partial token, so the copying is amortized against the bytes read.
    fn compact(&mut self) {
        if self.start > 0 {
            self.bytes.drain(..self.start);
            self.start = 0;
        }
        if self.bytes.is_empty() && self.bytes.capacity() > IDLE_CAPACITY_BYTES_MAX {
            self.bytes.shrink_to(READ_CHUNK_BYTES);
        }
    }
}

/// The outcome of one [`Parser::parse`] call that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete top-level frame.
    Frame(Frame),
    /// More bytes are needed; everything complete so far has been consumed and kept.
    Incomplete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Request,
    Reply,
}

/// An array whose header has been read but not all of its elements.
#[derive(Debug)]
struct PartialArray {
    len: usize,
    items: Vec<Frame>,
}

/// What one token of input turned out to be.
enum Token {
    Value(Frame),
    ArrayStart(usize),
    /// An empty request Redis ignores (`*0`, `*-1`, a blank inline line).
    Skip,
}

/// The incremental RESP2 parser; see the module docs.
#[derive(Debug)]
pub struct Parser {
    mode: Mode,
    limits: FrameLimits,
    /// Arrays being filled, outermost first.
    stack: Vec<PartialArray>,
    /// Bytes consumed so far by the top-level frame being parsed.
    request_bytes: usize,
    /// Elements announced so far by the array headers of that frame.
    request_elements: usize,
}

impl Parser {
    /// A parser for what clients send, with the default limits.
    pub fn request() -> Parser {
        Parser::new(Mode::Request, FrameLimits::default())
    }

    /// A parser for what clients send, with custom limits.
    pub fn request_with_limits(limits: FrameLimits) -> Parser {
        Parser::new(Mode::Request, limits)
    }

    /// A parser for any RESP2 value (server replies), with the default limits.
    pub fn reply() -> Parser {
        Parser::new(Mode::Reply, FrameLimits::default())
    }

    fn new(mode: Mode, limits: FrameLimits) -> Parser {
        Parser { mode, limits, stack: Vec::new(), request_bytes: 0, request_elements: 0 }
    }

    /// True when a frame has been partly consumed: end of stream now would cut a request.
    pub fn in_progress(&self) -> bool {
        !self.stack.is_empty()
    }

    /// Consumes complete tokens from `input` until a top-level frame is complete (returned) or
    /// the input runs out ([`Parsed::Incomplete`]; call again after appending more bytes).
    pub fn parse(&mut self, input: &mut InputBuffer) -> Result<Parsed, ProtocolError> {
        loop {
            let Some((token, token_bytes)) = self.next_token(input.unparsed())? else {
                return Ok(Parsed::Incomplete);
            };
            self.charge_bytes(token_bytes)?;
            input.advance(token_bytes);
            let value = match token {
                Token::Skip => {
                    self.request_bytes = 0;
                    continue;
                }
                Token::Value(frame) => frame,
                Token::ArrayStart(0) => Frame::Array(Vec::new()),
                Token::ArrayStart(len) => {
                    if self.stack.len() >= self.limits.nesting_depth_max {
                        return Err(ProtocolError::NestingTooDeep(self.limits.nesting_depth_max));
                    }
                    let items = Vec::with_capacity(len.min(PREALLOCATED_ELEMENTS_MAX));
                    self.stack.push(PartialArray { len, items });
                    continue;
                }
            };
            if let Some(frame) = self.complete(value) {
                self.request_bytes = 0;
                self.request_elements = 0;
                return Ok(Parsed::Frame(frame));
            }
        }
    }

    fn charge_bytes(&mut self, bytes: usize) -> Result<(), ProtocolError> {
        self.request_bytes = self.request_bytes.saturating_add(bytes);
        if self.request_bytes > self.limits.request_bytes_max {
            return Err(ProtocolError::RequestTooLarge(self.limits.request_bytes_max));
        }
        Ok(())
    }

    /// Places a finished value into the innermost open array, closing arrays that become full;
    /// returns the top-level frame once there is no open array left.
    fn complete(&mut self, mut value: Frame) -> Option<Frame> {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Some(value);
            };
            top.items.push(value);
            if top.items.len() < top.len {
                return None;
            }
            let full = self.stack.pop()?;
            value = Frame::Array(full.items);
        }
    }

    /// Recognizes one token at the start of `buf`; `None` when it is not all there yet. Returns
    /// the token and how many bytes it spans.
    fn next_token(&mut self, buf: &[u8]) -> Result<Option<(Token, usize)>, ProtocolError> {
        let Some(&tag) = buf.first() else {
            return Ok(None);
        };
        let top_level = self.stack.is_empty();
        match (self.mode, tag) {
            (Mode::Request, b'*') if top_level => self.array_header(buf),
            (Mode::Request, _) if top_level => self.inline(buf),
            (Mode::Request, b'$') => self.bulk(buf),
            (Mode::Request, other) => Err(ProtocolError::ExpectedBulk(other)),
            (Mode::Reply, b'*') => self.array_header(buf),
            (Mode::Reply, b'$') => self.bulk(buf),
            (Mode::Reply, b'+' | b'-') => {
                let Some((line, token_bytes)) =
                    find_line(buf, self.limits.inline_bytes_max, ProtocolError::InlineTooLong)?
                else {
                    return Ok(None);
                };
                let text = String::from_utf8_lossy(line).into_owned();
                let frame = if tag == b'+' { Frame::Simple(text) } else { Frame::Error(text) };
                Ok(Some((Token::Value(frame), token_bytes)))
            }
            (Mode::Reply, b':') => {
                let Some((line, token_bytes)) =
                    find_line(buf, NUMBER_LINE_BYTES_MAX, ProtocolError::InvalidInteger)?
                else {
                    return Ok(None);
                };
                let value = parse_integer(line).ok_or(ProtocolError::InvalidInteger)?;
                Ok(Some((Token::Value(Frame::Integer(value)), token_bytes)))
            }
            (Mode::Reply, other) => Err(ProtocolError::InvalidTypeByte(other)),
        }
    }

    fn array_header(&mut self, buf: &[u8]) -> Result<Option<(Token, usize)>, ProtocolError> {
        let Some((line, token_bytes)) =
            find_line(buf, NUMBER_LINE_BYTES_MAX, ProtocolError::InvalidMultibulkLength)?
        else {
            return Ok(None);
        };
        let len = parse_integer(line).ok_or(ProtocolError::InvalidMultibulkLength)?;
        let token = match (self.mode, len) {
            // Redis skips empty and negative multibulk requests without a reply.
            (Mode::Request, len) if len <= 0 => Token::Skip,
            (Mode::Reply, -1) => Token::Value(Frame::NullArray),
            (Mode::Reply, len) if len < 0 => return Err(ProtocolError::InvalidMultibulkLength),
            (_, len) => {
                let len = usize::try_from(len).map_err(|_| ProtocolError::InvalidMultibulkLength)?;
                if len > self.limits.elements_max {
                    return Err(ProtocolError::InvalidMultibulkLength);
                }
                self.request_elements = self.request_elements.saturating_add(len);
                if self.request_elements > self.limits.elements_max {
                    return Err(ProtocolError::TooManyElements(self.limits.elements_max));
                }
                Token::ArrayStart(len)
            }
        };
        Ok(Some((token, token_bytes)))
    }

    fn bulk(&self, buf: &[u8]) -> Result<Option<(Token, usize)>, ProtocolError> {
        let Some((line, header_bytes)) =
            find_line(buf, NUMBER_LINE_BYTES_MAX, ProtocolError::InvalidBulkLength)?
        else {
            return Ok(None);
        };
        let len = parse_integer(line).ok_or(ProtocolError::InvalidBulkLength)?;
        if len == -1 && self.mode == Mode::Reply {
            return Ok(Some((Token::Value(Frame::NullBulk), header_bytes)));
        }
        let len = usize::try_from(len).map_err(|_| ProtocolError::InvalidBulkLength)?;
        if len > self.limits.bulk_bytes_max {
            return Err(ProtocolError::InvalidBulkLength);
        }
        let token_bytes = header_bytes + len + 2;
        // Refuse now rather than after buffering a payload that cannot be accepted.
        if self.request_bytes.saturating_add(token_bytes) > self.limits.request_bytes_max {
            return Err(ProtocolError::RequestTooLarge(self.limits.request_bytes_max));
        }
        if buf.len() < token_bytes {
            return Ok(None);
        }
        if &buf[header_bytes + len..token_bytes] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        let payload = buf[header_bytes..header_bytes + len].to_vec();
        Ok(Some((Token::Value(Frame::Bulk(payload)), token_bytes)))
    }

    /// An inline command: one line terminated by LF (CR optional), split into arguments.
    fn inline(&self, buf: &[u8]) -> Result<Option<(Token, usize)>, ProtocolError> {
        // Room for the line, an optional CR and the LF.
        let scan_len = buf.len().min(self.limits.inline_bytes_max + 2);
        let Some(newline) = buf[..scan_len].iter().position(|&byte| byte == b'\n') else {
            if scan_len == self.limits.inline_bytes_max + 2 {
                return Err(ProtocolError::InlineTooLong);
            }
            return Ok(None);
        };
        let line = &buf[..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let args = split_inline_args(line)?;
        let token = if args.is_empty() {
            Token::Skip
        } else {
            Token::Value(Frame::Array(args.into_iter().map(Frame::Bulk).collect()))
        };
        Ok(Some((token, newline + 1)))
    }
}

/// Finds a CRLF-terminated line at the start of `buf` (after the type byte). Returns the line
/// without the type byte and CRLF, and the bytes spanned including both; `Err(too_long)` when
/// no CRLF can appear within `line_bytes_max`.
fn find_line(
    buf: &[u8],
    line_bytes_max: usize,
    too_long: ProtocolError,
) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let window = &buf[..buf.len().min(1 + line_bytes_max + 2)];
    match window.windows(2).position(|pair| pair == b"\r\n") {
        Some(cr) => Ok(Some((&buf[1..cr], cr + 2))),
        None if window.len() == 1 + line_bytes_max + 2 => Err(too_long),
        None => Ok(None),
    }
}

/// Splits an inline command line like Redis's `sdssplitargs`: whitespace separates arguments;
/// `"..."` understands `\n \r \t \b \a \\ \" \xHH`; `'...'` understands `\'`; a closing quote
/// must be followed by whitespace or the end of the line.
fn split_inline_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    let mut pos = 0;
    loop {
        while pos < line.len() && line[pos].is_ascii_whitespace() {
            pos += 1;
        }
        if pos == line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        while let Some(&byte) = line.get(pos) {
            match byte {
                b'"' => pos = double_quoted(line, pos + 1, &mut arg)?,
                b'\'' => pos = single_quoted(line, pos + 1, &mut arg)?,
                byte if byte.is_ascii_whitespace() => break,
                byte => {
                    arg.push(byte);
                    pos += 1;
                }
            }
        }
        args.push(arg);
    }
}

/// Reads a `"..."` body starting after the opening quote; returns the position after the closing
/// quote.
fn double_quoted(line: &[u8], mut pos: usize, arg: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        match line.get(pos..) {
            None | Some([]) => return Err(ProtocolError::UnbalancedQuotes),
            Some([b'\\', b'x', high, low, ..]) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() => {
                arg.push((hex_value(*high) << 4) | hex_value(*low));
                pos += 4;
            }
            Some([b'\\', escaped, ..]) => {
                arg.push(match escaped {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    other => *other,
                });
                pos += 2;
            }
            Some([b'"', rest @ ..]) => return closing_quote(rest, pos + 1),
            Some([byte, ..]) => {
                arg.push(*byte);
                pos += 1;
            }
        }
    }
}

fn single_quoted(line: &[u8], mut pos: usize, arg: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        match line.get(pos..) {
            None | Some([]) => return Err(ProtocolError::UnbalancedQuotes),
            Some([b'\\', b'\'', ..]) => {
                arg.push(b'\'');
                pos += 2;
            }
            Some([b'\'', rest @ ..]) => return closing_quote(rest, pos + 1),
            Some([byte, ..]) => {
                arg.push(*byte);
                pos += 1;
            }
        }
    }
}

/// Redis rejects `"foo"bar`: a closing quote must end the argument.
fn closing_quote(rest: &[u8], after: usize) -> Result<usize, ProtocolError> {
    match rest.first() {
        None => Ok(after),
        Some(byte) if byte.is_ascii_whitespace() => Ok(after),
        Some(_) => Err(ProtocolError::UnbalancedQuotes),
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn request(args: &[&[u8]]) -> Frame {
        Frame::Array(args.iter().map(|arg| Frame::Bulk(arg.to_vec())).collect())
    }

    /// Parses `bytes` fed in one piece; returns the frames, or the first error.
    fn parse_all(parser: &mut Parser, bytes: &[u8]) -> Result<Vec<Frame>, ProtocolError> {
        let mut input = InputBuffer::new();
        input.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Parsed::Frame(frame) = parser.parse(&mut input)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    /// Parses `bytes` delivered in the given chunk sizes.
    fn parse_chunked(
        mut parser: Parser,
        bytes: &[u8],
        splits: &[usize],
    ) -> Result<Vec<Frame>, ProtocolError> {
        let mut input = InputBuffer::new();
        let mut frames = Vec::new();
        let mut last = 0;
        for &split in splits.iter().chain(std::iter::once(&bytes.len())) {
            input.extend_from_slice(&bytes[last..split]);
            last = split;
            while let Parsed::Frame(frame) = parser.parse(&mut input)? {
                frames.push(frame);
            }
        }
        Ok(frames)
    }

    #[test]
    fn encodes_every_frame_kind() {
        let frame = Frame::Array(vec![
            Frame::ok(),
            Frame::Error("ERR bad\r\nthing".into()),
            Frame::Integer(-12),
            Frame::bulk("hi"),
            Frame::NullBulk,
            Frame::Array(vec![]),
            Frame::NullArray,
        ]);
        let bytes = frame.to_bytes();
        assert_eq!(bytes, b"*7\r\n+OK\r\n-ERR bad  thing\r\n:-12\r\n$2\r\nhi\r\n$-1\r\n*0\r\n*-1\r\n");
        assert_eq!(frame.encoded_len(), bytes.len());
        assert_eq!(Frame::Integer(i64::MIN).to_bytes(), b":-9223372036854775808\r\n");
        assert_eq!(Frame::Integer(i64::MIN).encoded_len(), 23);
    }

    #[test]
    fn reply_parser_round_trips_every_frame_kind() {
        let frame = Frame::Array(vec![
            Frame::ok(),
            Frame::Error("ERR x".into()),
            Frame::Integer(7),
            Frame::bulk(&b"a\r\nb"[..]),
            Frame::NullBulk,
            Frame::Array(vec![Frame::bulk(""), Frame::Array(vec![])]),
            Frame::NullArray,
        ]);
        assert_eq!(parse_all(&mut Parser::reply(), &frame.to_bytes()), Ok(vec![frame]));
    }

    #[test]
    fn request_parser_reads_multibulk_and_inline() {
        let bytes = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n  set  a  \"b c\"\r\n\r\n*0\r\nECHO 'it\\'s'\n";
        let frames = parse_all(&mut Parser::request(), bytes);
        assert_eq!(
            frames,
            Ok(vec![
                request(&[b"GET", b"k"]),
                request(&[b"PING"]),
                request(&[b"set", b"a", b"b c"]),
                request(&[b"ECHO", b"it's"]),
            ])
        );
    }

    #[test]
    fn inline_escapes_follow_sdssplitargs() {
        let frames = parse_all(&mut Parser::request(), b"SET \"\\x41\\n\\\"\" ''\r\n");
        assert_eq!(frames, Ok(vec![request(&[b"SET", b"A\n\"", b""])]));
        for bad in [&b"SET \"abc\r\n"[..], b"SET 'abc\r\n", b"SET \"a\"b\r\n"] {
            assert_eq!(parse_all(&mut Parser::request(), bad), Err(ProtocolError::UnbalancedQuotes));
        }
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let bytes: &[u8] = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\nPING\r\n*1\r\n$4\r\nPING\r\n";
        let whole = parse_chunked(Parser::request(), bytes, &[]).unwrap();
        assert_eq!(whole.len(), 3);
        for split in 0..=bytes.len() {
            assert_eq!(parse_chunked(Parser::request(), bytes, &[split]).unwrap(), whole, "split at {split}");
        }
        // One byte at a time, the most fragmented delivery there is.
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(parse_chunked(Parser::request(), bytes, &every).unwrap(), whole);

        let reply =
            Frame::Array(vec![Frame::bulk("0"), Frame::Array(vec![Frame::bulk("k"), Frame::NullBulk])]);
        let reply_bytes = reply.to_bytes();
        for split in 0..=reply_bytes.len() {
            assert_eq!(parse_chunked(Parser::reply(), &reply_bytes, &[split]).unwrap(), vec![reply.clone()]);
        }
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let mut bytes = Vec::new();
        for i in 0..100 {
            request(&[b"INCR", format!("k{i}").as_bytes()]).encode(&mut bytes);
        }
        let frames = parse_all(&mut Parser::request(), &bytes).unwrap();
        assert_eq!(frames.len(), 100);
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(frame, &request(&[b"INCR", format!("k{i}").as_bytes()]));
        }
    }

    #[test]
    fn incomplete_input_is_kept_and_resumed() {
        let mut parser = Parser::request();
        let mut input = InputBuffer::new();
        input.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$1\r");
        assert_eq!(parser.parse(&mut input), Ok(Parsed::Incomplete));
        assert!(parser.in_progress());
        // The finished element was consumed; only the partial one is left.
        assert_eq!(input.unparsed(), b"$1\r");
        input.extend_from_slice(b"\nk\r\n");
        assert_eq!(parser.parse(&mut input), Ok(Parsed::Frame(request(&[b"GET", b"k"]))));
        assert!(!parser.in_progress());
        assert!(input.is_empty());
    }

    #[test]
    fn malformed_requests_are_protocol_errors() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*x\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*1\r\n:1\r\n", ProtocolError::ExpectedBulk(b':')),
            (b"*1\r\n$-1\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$abc\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$3\r\nabcde\r\n", ProtocolError::MissingCrlf),
            (b"*1\r\n$1\r\n\r\n\r\n", ProtocolError::MissingCrlf),
            (b"*2\r\n$1\r\na\r\n*1\r\n", ProtocolError::ExpectedBulk(b'*')),
            (b"*99999999999999999999999\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*1\r\n$0000000000000000000000000000000001\r\n", ProtocolError::InvalidBulkLength),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                parse_all(&mut Parser::request(), bytes),
                Err(expected.clone()),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(parse_all(&mut Parser::reply(), b"?x\r\n"), Err(ProtocolError::InvalidTypeByte(b'?')));
        assert_eq!(parse_all(&mut Parser::reply(), b"*-2\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse_all(&mut Parser::reply(), b":1.5\r\n"), Err(ProtocolError::InvalidInteger));
        assert_eq!(
            ProtocolError::ExpectedBulk(b':').to_frame(),
            Frame::Error("ERR Protocol error: expected '$', got ':'".into())
        );
    }

    #[test]
    fn limits_are_enforced_before_buffering() {
        let limits = FrameLimits {
            request_bytes_max: 100,
            bulk_bytes_max: 50,
            elements_max: 4,
            inline_bytes_max: 16,
            nesting_depth_max: 2,
        };
        let parse = |bytes: &[u8]| parse_all(&mut Parser::request_with_limits(limits), bytes);
        // A header announcing too much fails at once, with no payload sent.
        assert_eq!(parse(b"*1\r\n$51\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(parse(b"*5\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(parse(b"*2\r\n$40\r\n"), Ok(vec![]));
        let forty = [b'x'; 40];
        let mut two_bulks = b"*2\r\n$40\r\n".to_vec();
        two_bulks.extend_from_slice(&forty);
        two_bulks.extend_from_slice(b"\r\n$45\r\n");
        assert_eq!(parse(&two_bulks), Err(ProtocolError::RequestTooLarge(100)));
        assert_eq!(parse(&[b'A'; 18]), Err(ProtocolError::InlineTooLong));
        assert_eq!(parse(&[b'A'; 17]), Ok(vec![]));
        assert_eq!(parse(b"ECHO 0123456789\r\n"), Ok(vec![request(&[b"ECHO", b"0123456789"])]));
        assert_eq!(
            parse(b"*1\r\n$1234567890123456789012345678901234"),
            Err(ProtocolError::InvalidBulkLength)
        );

        let reply_limits = FrameLimits { nesting_depth_max: 2, ..FrameLimits::default() };
        let mut reply = Parser::new(Mode::Reply, reply_limits);
        assert_eq!(parse_all(&mut reply, b"*1\r\n*1\r\n*1\r\n"), Err(ProtocolError::NestingTooDeep(2)));
        let mut reply = Parser::new(Mode::Reply, FrameLimits { elements_max: 3, ..FrameLimits::default() });
        assert_eq!(parse_all(&mut reply, b"*2\r\n*2\r\n"), Err(ProtocolError::TooManyElements(3)));
    }

    #[test]
    fn huge_announced_array_does_not_preallocate() {
        let mut parser = Parser::request();
        let mut input = InputBuffer::new();
        input.extend_from_slice(b"*1048576\r\n");
        assert_eq!(parser.parse(&mut input), Ok(Parsed::Incomplete));
        assert!(parser.stack[0].items.capacity() <= PREALLOCATED_ELEMENTS_MAX);
    }

    /// A valid request, as bytes, for the mutation proptest below.
    fn valid_request() -> impl Strategy<Value = Vec<u8>> {
        let arg = proptest::collection::vec(any::<u8>(), 0..12);
        proptest::collection::vec(arg, 1..6)
            .prop_map(|args| Frame::Array(args.into_iter().map(Frame::Bulk).collect()).to_bytes())
    }

    /// Bytes held by a frame tree, as a bound on parser output memory.
    fn frame_bytes(frame: &Frame) -> usize {
        match frame {
            Frame::Bulk(bytes) => bytes.len(),
            Frame::Array(items) => items.iter().map(frame_bytes).sum(),
            _ => 0,
        }
    }

    fn small_limits() -> FrameLimits {
        FrameLimits {
            request_bytes_max: 4096,
            bulk_bytes_max: 1024,
            elements_max: 64,
            inline_bytes_max: 256,
            nesting_depth_max: 4,
        }
    }

    /// Drives a parser over `bytes` in `chunk`-sized reads and checks the memory bounds after
    /// every call: the buffer holds at most one partial token and the parser's state stays under
    /// its limits. Returns the frames.
    fn drive_checked(mut parser: Parser, bytes: &[u8], chunk: usize) -> Vec<Frame> {
        let limits = parser.limits;
        let token_bytes_max = limits.bulk_bytes_max.max(limits.inline_bytes_max) + 2 * NUMBER_LINE_BYTES_MAX;
        let mut input = InputBuffer::new();
        let mut frames = Vec::new();
        for piece in bytes.chunks(chunk.max(1)) {
            input.extend_from_slice(piece);
            loop {
                match parser.parse(&mut input) {
                    Ok(Parsed::Frame(frame)) => {
                        assert!(frame_bytes(&frame) <= limits.request_bytes_max);
                        frames.push(frame);
                    }
                    Ok(Parsed::Incomplete) => break,
                    Err(_) => return frames,
                }
            }
            assert!(input.len() <= token_bytes_max + chunk, "buffer grew to {}", input.len());
            assert!(parser.stack.len() <= limits.nesting_depth_max);
            assert!(parser.request_elements <= limits.elements_max);
            assert!(parser.request_bytes <= limits.request_bytes_max);
        }
        frames
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_stay_bounded(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            chunk in 1usize..64,
        ) {
            drive_checked(Parser::request_with_limits(small_limits()), &bytes, chunk);
            drive_checked(Parser::new(Mode::Reply, small_limits()), &bytes, chunk);
        }

        #[test]
        fn mutated_requests_never_panic_and_stay_bounded(
            requests in proptest::collection::vec(valid_request(), 1..8),
            mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..6),
            chunk in 1usize..64,
        ) {
            let mut bytes: Vec<u8> = requests.concat();
            for (index, byte, kind) in mutations {
                if bytes.is_empty() {
                    break;
                }
                let at = index.index(bytes.len());
                match kind {
                    0 => bytes[at] = byte,
                    1 => { bytes.remove(at); }
                    _ => bytes.insert(at, byte),
                }
            }
            drive_checked(Parser::request_with_limits(small_limits()), &bytes, chunk);
        }

        #[test]
        fn valid_requests_parse_identically_in_any_chunking(
            requests in proptest::collection::vec(valid_request(), 1..8),
            chunk in 1usize..64,
        ) {
            let bytes: Vec<u8> = requests.concat();
            let frames = drive_checked(Parser::request(), &bytes, chunk);
            let expected: Vec<Frame> = requests
                .iter()
                .map(|one| parse_all(&mut Parser::request(), one).unwrap().remove(0))
                .collect();
            prop_assert_eq!(frames, expected);
        }
    }
}
