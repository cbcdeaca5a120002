//! Commands: a request frame becomes a [`Command`] (or a Redis-style error reply), and a
//! [`Command`] runs against a [`KvBackend`] to produce exactly one reply [`Frame`].
//!
//! Parsing does every check that does not need the cluster (arity, syntax, option
//! combinations, integer arguments, key and value sizes), so `execute` only ever fails because of
//! the backend. Error wording copies Redis's, because client libraries and people match on it:
//! `ERR wrong number of arguments for 'get' command`, `ERR syntax error`,
//! `ERR unknown command 'xyz', with args beginning with: 'a' `.
//!
//! Multi-key commands (MGET, MSET, EXISTS) are composed from single-key backend calls, so they
//! are not atomic across keys; DEL is one backend call. SCAN's cursor is stateless: it encodes the
//! next key to scan from (see [`encode_cursor`]), so any connection can continue an iteration and
//! a key present for the whole iteration is returned exactly once.

use super::backend::{BackendError, KvBackend, SetCondition};
use super::frame::Frame;
use super::{
    glob, parse_integer, KEY_BYTES_MAX, REPLY_BYTES_MAX, SCAN_COUNT_DEFAULT, SCAN_COUNT_MAX, VALUE_BYTES_MAX,
};

/// The version we claim in INFO and HELLO: clients gate features on it, and we speak the 7.0
/// wording for the commands we support.
pub const REDIS_VERSION: &str = "7.0.0-flotilla-compatible";

/// Longest client name accepted by CLIENT SETNAME / HELLO SETNAME.
const CLIENT_NAME_BYTES_MAX: usize = 256;

/// Per-connection state commands may read or change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    /// Unique per server; CLIENT ID and HELLO report it.
    pub id: u64,
    /// Set by CLIENT SETNAME or HELLO ... SETNAME.
    pub name: Option<Vec<u8>>,
}

impl Session {
    pub fn new(id: u64) -> Session {
        Session { id, name: None }
    }
}

/// An error reply: the whole line after `-`, starting with its code word (`ERR`, `NOPROTO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError(String);

impl ReplyError {
    /// An error with the generic `ERR` code.
    pub fn err(message: impl AsRef<str>) -> ReplyError {
        ReplyError(format!("ERR {}", message.as_ref()))
    }

    pub fn wrong_arity(command: &str) -> ReplyError {
        ReplyError::err(format!("wrong number of arguments for '{command}' command"))
    }

    pub fn syntax() -> ReplyError {
        ReplyError::err("syntax error")
    }

    pub fn not_an_integer() -> ReplyError {
        ReplyError::err(super::backend::NOT_AN_INTEGER)
    }

    /// The full line, e.g. `ERR syntax error`.
    pub fn line(&self) -> &str {
        &self.0
    }

    pub fn to_frame(&self) -> Frame {
        Frame::Error(self.0.clone())
    }
}

impl From<BackendError> for ReplyError {
    fn from(error: BackendError) -> ReplyError {
        match error {
            BackendError::Unavailable(message) => {
                ReplyError::err(format!("unavailable, try again: {message}"))
            }
            BackendError::TooLarge(message) | BackendError::Invalid(message) => ReplyError::err(message),
            BackendError::Internal(message) => ReplyError::err(format!("internal error: {message}")),
        }
    }
}

/// A parsed, validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ping(Option<Vec<u8>>),
    Echo(Vec<u8>),
    Get(Vec<u8>),
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        cond: SetCondition,
    },
    SetNx {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Del(Vec<Vec<u8>>),
    Exists(Vec<Vec<u8>>),
    MGet(Vec<Vec<u8>>),
    MSet(Vec<(Vec<u8>, Vec<u8>)>),
    /// INCR, DECR, INCRBY and DECRBY, with the sign already applied.
    IncrBy {
        key: Vec<u8>,
        delta: i64,
    },
    Append {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    StrLen(Vec<u8>),
    Scan(ScanArgs),
    /// The requested sections, lowercased; empty means the default set.
    Info(Vec<String>),
    Quit,
    /// `COMMAND`, `COMMAND DOCS|INFO|LIST`: we publish no command table, so an empty array.
    CommandDocs,
    CommandCount,
    ClientSetName(Option<Vec<u8>>),
    ClientGetName,
    ClientId,
    /// CLIENT SETINFO: accepted and ignored.
    ClientSetInfo,
    Hello {
        name: Option<Vec<u8>>,
    },
    /// SELECT 0, the only database there is.
    Select,
}

/// SCAN's arguments after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanArgs {
    /// The first key this call may return (empty = the start of the keyspace).
    pub start: Vec<u8>,
    pub pattern: Option<Vec<u8>>,
    pub count: usize,
    /// `TYPE t` with anything but `string` filters every key out (all values are strings).
    pub strings_only_filtered_out: bool,
}

/// Walks a command's arguments; each accessor reports a missing argument as Redis's arity error.
struct Args {
    command: &'static str,
    rest: std::vec::IntoIter<Vec<u8>>,
}

impl Args {
    fn next(&mut self) -> Result<Vec<u8>, ReplyError> {
        self.rest.next().ok_or_else(|| ReplyError::wrong_arity(self.command))
    }

    fn key(&mut self) -> Result<Vec<u8>, ReplyError> {
        let key = self.next()?;
        if key.len() > KEY_BYTES_MAX {
            return Err(ReplyError::err(format!(
                "key exceeds maximum allowed size of {KEY_BYTES_MAX} bytes"
            )));
        }
        Ok(key)
    }

    fn value(&mut self) -> Result<Vec<u8>, ReplyError> {
        let value = self.next()?;
        if value.len() > VALUE_BYTES_MAX {
            return Err(ReplyError::err(format!(
                "value exceeds maximum allowed size of {VALUE_BYTES_MAX} bytes"
            )));
        }
        Ok(value)
    }

    fn integer(&mut self) -> Result<i64, ReplyError> {
        parse_integer(&self.next()?).ok_or_else(ReplyError::not_an_integer)
    }

    fn keys(&mut self) -> Result<Vec<Vec<u8>>, ReplyError> {
        std::iter::from_fn(|| (self.rest.len() > 0).then(|| self.key())).collect()
    }

    fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn finish(&self) -> Result<(), ReplyError> {
        if self.rest.len() > 0 {
            return Err(ReplyError::wrong_arity(self.command));
        }
        Ok(())
    }
}

/// Redis arity: positive = exactly that many words (name included), negative = at least that
/// many.
fn check_arity(command: &'static str, words: usize, arity: i64) -> Result<(), ReplyError> {
    let words = i64::try_from(words).unwrap_or(i64::MAX);
    let ok = if arity >= 0 { words == arity } else { words >= -arity };
    if ok {
        Ok(())
    } else {
        Err(ReplyError::wrong_arity(command))
    }
}

impl Command {
    /// Parses a request frame: an array of bulk strings whose first element names the command.
    pub fn from_frame(frame: Frame) -> Result<Command, ReplyError> {
        let Frame::Array(items) = frame else {
            return Err(ReplyError::err("Protocol error: expected an array of bulk strings"));
        };
        let args = items
            .into_iter()
            .map(|item| match item {
                Frame::Bulk(bytes) => Ok(bytes),
                _ => Err(ReplyError::err("Protocol error: expected an array of bulk strings")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Command::parse(args)
    }

    /// Parses a command from its words (name first).
    pub fn parse(words: Vec<Vec<u8>>) -> Result<Command, ReplyError> {
        let Some(first) = words.first() else {
            return Err(ReplyError::err("empty command"));
        };
        let name = first.to_ascii_lowercase();
        let count = words.len();
        let (command, arity): (&'static str, i64) = match name.as_slice() {
            b"ping" => ("ping", -1),
            b"echo" => ("echo", 2),
            b"get" => ("get", 2),
            b"set" => ("set", -3),
            b"setnx" => ("setnx", 3),
            b"del" => ("del", -2),
            b"exists" => ("exists", -2),
            b"mget" => ("mget", -2),
            b"mset" => ("mset", -3),
            b"incr" => ("incr", 2),
            b"decr" => ("decr", 2),
            b"incrby" => ("incrby", 3),
            b"decrby" => ("decrby", 3),
            b"append" => ("append", 3),
            b"strlen" => ("strlen", 2),
            b"scan" => ("scan", -2),
            b"info" => ("info", -1),
            b"quit" => ("quit", -1),
            b"command" => ("command", -1),
            b"client" => ("client", -2),
            b"hello" => ("hello", -1),
            b"select" => ("select", 2),
            b"auth" => ("auth", -2),
            b"multi" | b"exec" | b"discard" | b"watch" | b"unwatch" => {
                return Err(ReplyError::err("MULTI/EXEC transactions are not supported yet"));
            }
            b"setex" | b"psetex" | b"getex" | b"expire" | b"pexpire" | b"expireat" | b"pexpireat" => {
                return Err(expiry_unsupported());
            }
            _ => return Err(unknown_command(&words)),
        };
        check_arity(command, count, arity)?;
        let mut rest = words.into_iter();
        rest.next();
        let mut args = Args { command, rest };
        let parsed = match command {
            "ping" => {
                // Arity -1 allows any count; PING takes at most one message (finish() checks).
                Command::Ping(args.rest.next())
            }
            "echo" => Command::Echo(args.next()?),
            "get" => Command::Get(args.key()?),
            "set" => parse_set(&mut args)?,
            "setnx" => Command::SetNx { key: args.key()?, value: args.value()? },
            "del" => Command::Del(args.keys()?),
            "exists" => Command::Exists(args.keys()?),
            "mget" => Command::MGet(args.keys()?),
            "mset" => {
                if args.remaining() % 2 != 0 {
                    return Err(ReplyError::wrong_arity("mset"));
                }
                let mut pairs = Vec::with_capacity(args.remaining() / 2);
                while args.remaining() > 0 {
                    pairs.push((args.key()?, args.value()?));
                }
                Command::MSet(pairs)
            }
            "incr" => Command::IncrBy { key: args.key()?, delta: 1 },
            "decr" => Command::IncrBy { key: args.key()?, delta: -1 },
            "incrby" => Command::IncrBy { key: args.key()?, delta: args.integer()? },
            "decrby" => {
                let key = args.key()?;
                let delta = args
                    .integer()?
                    .checked_neg()
                    .ok_or_else(|| ReplyError::err("decrement would overflow"))?;
                Command::IncrBy { key, delta }
            }
            "append" => Command::Append { key: args.key()?, value: args.value()? },
            "strlen" => Command::StrLen(args.key()?),
            "scan" => parse_scan(&mut args)?,
            "info" => {
                let sections =
                    args.rest.by_ref().map(|s| String::from_utf8_lossy(&s).to_lowercase()).collect();
                Command::Info(sections)
            }
            "quit" => Command::Quit,
            "command" => parse_command_subcommand(&mut args)?,
            "client" => parse_client(&mut args)?,
            "hello" => parse_hello(&mut args)?,
            "select" => match args.integer()? {
                0 => Command::Select,
                _ => return Err(ReplyError::err("DB index is out of range")),
            },
            "auth" => {
                return Err(ReplyError::err(
                    "AUTH is not supported by flotilla (no authentication configured)",
                ))
            }
            other => return Err(ReplyError::err(format!("unhandled command '{other}'"))),
        };
        args.finish()?;
        Ok(parsed)
    }

    /// A static name for metrics and logs (bounded cardinality).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Ping(_) => "ping",
            Command::Echo(_) => "echo",
            Command::Get(_) => "get",
            Command::Set { .. } => "set",
            Command::SetNx { .. } => "setnx",
            Command::Del(_) => "del",
            Command::Exists(_) => "exists",
            Command::MGet(_) => "mget",
            Command::MSet(_) => "mset",
            Command::IncrBy { .. } => "incrby",
            Command::Append { .. } => "append",
            Command::StrLen(_) => "strlen",
            Command::Scan(_) => "scan",
            Command::Info(_) => "info",
            Command::Quit => "quit",
            Command::CommandDocs | Command::CommandCount => "command",
            Command::ClientSetName(_)
            | Command::ClientGetName
            | Command::ClientId
            | Command::ClientSetInfo => "client",
            Command::Hello { .. } => "hello",
            Command::Select => "select",
        }
    }

    /// Whether the connection closes after this command's reply is sent.
    pub fn closes_connection(&self) -> bool {
        matches!(self, Command::Quit)
    }

    /// Runs the command; always produces exactly one reply.
    pub async fn execute(self, backend: &dyn KvBackend, session: &mut Session) -> Frame {
        match self.run(backend, session).await {
            Ok(frame) => frame,
            Err(error) => error.to_frame(),
        }
    }

    async fn run(self, backend: &dyn KvBackend, session: &mut Session) -> Result<Frame, ReplyError> {
        let frame = match self {
            Command::Ping(None) => Frame::Simple("PONG".to_owned()),
            Command::Ping(Some(message)) | Command::Echo(message) => Frame::Bulk(message),
            Command::Get(key) => backend.get(key).await?.map_or(Frame::NullBulk, Frame::Bulk),
            Command::Set { key, value, cond } => {
                if backend.set(key, value, cond).await? {
                    Frame::ok()
                } else {
                    Frame::NullBulk
                }
            }
            Command::SetNx { key, value } => {
                Frame::Integer(i64::from(backend.set(key, value, SetCondition::IfAbsent).await?))
            }
            Command::Del(keys) => Frame::Integer(saturating_i64(backend.delete(keys).await?)),
            Command::Exists(keys) => {
                let mut found = 0;
                for key in keys {
                    if backend.get(key).await?.is_some() {
                        found += 1;
                    }
                }
                Frame::Integer(found)
            }
            Command::MGet(keys) => {
                let mut values = Vec::with_capacity(keys.len());
                let mut reply_bytes = 0usize;
                for key in keys {
                    let value = backend.get(key).await?.map_or(Frame::NullBulk, Frame::Bulk);
                    reply_bytes += value.encoded_len();
                    if reply_bytes > REPLY_BYTES_MAX {
                        return Err(ReplyError::err(format!("reply exceeds {REPLY_BYTES_MAX} bytes")));
                    }
                    values.push(value);
                }
                Frame::Array(values)
            }
            Command::MSet(pairs) => {
                for (key, value) in pairs {
                    backend.set(key, value, SetCondition::Always).await?;
                }
                Frame::ok()
            }
            Command::IncrBy { key, delta } => Frame::Integer(backend.incr_by(key, delta).await?),
            Command::Append { key, value } => {
                Frame::Integer(saturating_i64(backend.append(key, value).await?))
            }
            Command::StrLen(key) => {
                let len = backend.get(key).await?.map_or(0, |value| value.len());
                Frame::Integer(saturating_i64(len as u64))
            }
            Command::Scan(args) => scan(backend, args).await?,
            Command::Info(sections) => Frame::Bulk(info(backend, &sections).await.into_bytes()),
            Command::Quit | Command::Select | Command::ClientSetInfo => Frame::ok(),
            Command::CommandDocs => Frame::Array(Vec::new()),
            Command::CommandCount => Frame::Integer(0),
            Command::ClientSetName(name) => {
                session.name = name;
                Frame::ok()
            }
            Command::ClientGetName => session.name.clone().map_or(Frame::NullBulk, Frame::Bulk),
            Command::ClientId => Frame::Integer(saturating_i64(session.id)),
            Command::Hello { name } => {
                if name.is_some() {
                    session.name = name;
                }
                hello_reply(session)
            }
        };
        Ok(frame)
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn expiry_unsupported() -> ReplyError {
    ReplyError::err("expiry options are not supported by flotilla (keys never expire)")
}

/// Redis's exact wording, including the quoted, truncated argument list with its trailing space.
fn unknown_command(words: &[Vec<u8>]) -> ReplyError {
    const SHOWN_BYTES_MAX: usize = 128;
    let name = String::from_utf8_lossy(words.first().map_or(&[][..], Vec::as_slice)).into_owned();
    let mut shown = String::new();
    for arg in words.iter().skip(1) {
        if shown.len() >= SHOWN_BYTES_MAX {
            break;
        }
        let arg = String::from_utf8_lossy(arg);
        shown.push('\'');
        shown.push_str(truncate_utf8(&arg, SHOWN_BYTES_MAX - shown.len() + 1));
        shown.push_str("' ");
    }
    ReplyError::err(format!(
        "unknown command '{}', with args beginning with: {shown}",
        truncate_utf8(&name, SHOWN_BYTES_MAX)
    ))
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn parse_set(args: &mut Args) -> Result<Command, ReplyError> {
    let key = args.key()?;
    let value = args.value()?;
    let mut cond = SetCondition::Always;
    let mut expiry = false;
    while let Some(option) = args.rest.next() {
        match option.to_ascii_lowercase().as_slice() {
            b"nx" if cond != SetCondition::IfPresent => cond = SetCondition::IfAbsent,
            b"xx" if cond != SetCondition::IfAbsent => cond = SetCondition::IfPresent,
            b"keepttl" => expiry = true,
            b"ex" | b"px" | b"exat" | b"pxat" => {
                // Redis reports a missing expiry argument as a syntax error; keep that order.
                if args.rest.next().is_none() {
                    return Err(ReplyError::syntax());
                }
                expiry = true;
            }
            b"get" => return Err(ReplyError::err("SET ... GET is not supported by flotilla")),
            _ => return Err(ReplyError::syntax()),
        }
    }
    if expiry {
        return Err(expiry_unsupported());
    }
    Ok(Command::Set { key, value, cond })
}

fn parse_scan(args: &mut Args) -> Result<Command, ReplyError> {
    let start = decode_cursor(&args.next()?)?;
    let mut scan =
        ScanArgs { start, pattern: None, count: SCAN_COUNT_DEFAULT, strings_only_filtered_out: false };
    while let Some(option) = args.rest.next() {
        let value = args.rest.next().ok_or_else(ReplyError::syntax)?;
        match option.to_ascii_lowercase().as_slice() {
            b"match" => scan.pattern = Some(value),
            b"count" => {
                let count = parse_integer(&value).ok_or_else(ReplyError::not_an_integer)?;
                if count < 1 {
                    return Err(ReplyError::syntax());
                }
                // Clamped, not refused: COUNT is a hint in Redis too.
                scan.count = usize::try_from(count).unwrap_or(usize::MAX).min(SCAN_COUNT_MAX);
            }
            b"type" => scan.strings_only_filtered_out = !value.eq_ignore_ascii_case(b"string"),
            _ => return Err(ReplyError::syntax()),
        }
    }
    Ok(Command::Scan(scan))
}

fn parse_command_subcommand(args: &mut Args) -> Result<Command, ReplyError> {
    let Some(sub) = args.rest.next() else {
        return Ok(Command::CommandDocs);
    };
    let parsed = match sub.to_ascii_lowercase().as_slice() {
        b"docs" | b"info" | b"list" => Command::CommandDocs,
        b"count" => Command::CommandCount,
        _ => return Err(unknown_subcommand(&sub, "COMMAND")),
    };
    // DOCS/INFO/LIST take command names or filters we ignore.
    args.rest.by_ref().for_each(drop);
    Ok(parsed)
}

fn unknown_subcommand(sub: &[u8], command: &str) -> ReplyError {
    let sub = String::from_utf8_lossy(sub);
    ReplyError::err(format!("unknown subcommand '{}'. Try {command} HELP.", truncate_utf8(&sub, 128)))
}

fn parse_client(args: &mut Args) -> Result<Command, ReplyError> {
    let sub = args.next()?;
    let (command, arity): (&'static str, usize) = match sub.to_ascii_lowercase().as_slice() {
        b"setname" => ("client|setname", 1),
        b"getname" => ("client|getname", 0),
        b"id" => ("client|id", 0),
        b"setinfo" => ("client|setinfo", 2),
        _ => return Err(unknown_subcommand(&sub, "CLIENT")),
    };
    if args.remaining() != arity {
        return Err(ReplyError::wrong_arity(command));
    }
    Ok(match command {
        "client|setname" => Command::ClientSetName(client_name(args.next()?)?),
        "client|getname" => Command::ClientGetName,
        "client|id" => Command::ClientId,
        _ => {
            args.rest.by_ref().for_each(drop);
            Command::ClientSetInfo
        }
    })
}

/// Redis's rule: a name is printable ASCII without spaces; an empty name clears it.
fn client_name(name: Vec<u8>) -> Result<Option<Vec<u8>>, ReplyError> {
    if name.len() > CLIENT_NAME_BYTES_MAX || !name.iter().all(|byte| (b'!'..=b'~').contains(byte)) {
        return Err(ReplyError::err("Client names cannot contain spaces, newlines or special characters."));
    }
    Ok((!name.is_empty()).then_some(name))
}

fn parse_hello(args: &mut Args) -> Result<Command, ReplyError> {
    let Some(version) = args.rest.next() else {
        return Ok(Command::Hello { name: None });
    };
    match parse_integer(&version) {
        Some(2) => {}
        Some(_) => return Err(ReplyError("NOPROTO unsupported protocol version".to_owned())),
        None => return Err(ReplyError::err("Protocol version is not an integer or out of range")),
    }
    let mut name = None;
    while let Some(option) = args.rest.next() {
        match option.to_ascii_lowercase().as_slice() {
            b"setname" => name = client_name(args.rest.next().ok_or_else(ReplyError::syntax)?)?,
            b"auth" => {
                return Err(ReplyError::err(
                    "AUTH is not supported by flotilla (no authentication configured)",
                ))
            }
            _ => return Err(ReplyError::syntax()),
        }
    }
    Ok(Command::Hello { name })
}

/// HELLO's map, flattened into an array as RESP2 does.
fn hello_reply(session: &Session) -> Frame {
    Frame::Array(vec![
        Frame::bulk("server"),
        Frame::bulk("redis"),
        Frame::bulk("version"),
        Frame::bulk(REDIS_VERSION),
        Frame::bulk("proto"),
        Frame::Integer(2),
        Frame::bulk("id"),
        Frame::Integer(saturating_i64(session.id)),
        Frame::bulk("mode"),
        Frame::bulk("standalone"),
        Frame::bulk("role"),
        Frame::bulk("master"),
        Frame::bulk("modules"),
        Frame::Array(Vec::new()),
    ])
}

/// SCAN cursors: `0` starts and ends an iteration; any other cursor is `1` followed by three
/// decimal digits per byte of the next key to scan from.
///
/// Decimal rather than hex because common clients (redis-py among them) turn the cursor into an
/// integer and back; the leading `1` keeps leading zero bytes from being lost on that trip.
pub fn encode_cursor(start: &[u8]) -> Vec<u8> {
    if start.is_empty() {
        return b"0".to_vec();
    }
    let mut cursor = Vec::with_capacity(1 + 3 * start.len());
    cursor.push(b'1');
    for byte in start {
        cursor.extend_from_slice(&[b'0' + byte / 100, b'0' + byte / 10 % 10, b'0' + byte % 10]);
    }
    cursor
}

/// The inverse of [`encode_cursor`].
pub fn decode_cursor(cursor: &[u8]) -> Result<Vec<u8>, ReplyError> {
    let invalid = || ReplyError::err("invalid cursor");
    if cursor == b"0" {
        return Ok(Vec::new());
    }
    let Some((b'1', digits)) = cursor.split_first() else {
        return Err(invalid());
    };
    // A cursor names a key plus one byte at most (the successor of the last key returned).
    if digits.len() % 3 != 0 || digits.len() / 3 > KEY_BYTES_MAX + 1 {
        return Err(invalid());
    }
    digits
        .chunks(3)
        .map(|triple| {
            let mut value: u16 = 0;
            for &digit in triple {
                if !digit.is_ascii_digit() {
                    return Err(invalid());
                }
                value = value * 10 + u16::from(digit - b'0');
            }
            u8::try_from(value).map_err(|_| invalid())
        })
        .collect()
}

/// The smallest key greater than every key starting with `prefix`, or None when there is none
/// (an empty prefix, or all 0xFF bytes).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&byte| byte != 0xFF)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// One SCAN page: ask the backend for up to `count` keys from the cursor, narrowed to the
/// MATCH pattern's literal prefix; filter by the pattern; the next cursor is the successor of the
/// last key the backend returned, or 0 when it returned fewer than asked (nothing left).
async fn scan(backend: &dyn KvBackend, args: ScanArgs) -> Result<Frame, ReplyError> {
    let mut start = args.start;
    let mut end = None;
    if let Some(pattern) = &args.pattern {
        let prefix = glob::literal_prefix(pattern);
        end = prefix_end(&prefix);
        if start < prefix {
            start = prefix;
        }
    }
    let done = Frame::Array(vec![Frame::bulk("0"), Frame::Array(Vec::new())]);
    if end.as_ref().is_some_and(|end| start >= *end) {
        return Ok(done);
    }
    let page = backend.scan(start, end, args.count).await?;
    let next = match page.last() {
        Some((last, _)) if page.len() >= args.count => {
            let mut successor = last.clone();
            successor.push(0);
            encode_cursor(&successor)
        }
        _ => b"0".to_vec(),
    };
    let keys = page
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| {
            !args.strings_only_filtered_out && args.pattern.as_ref().is_none_or(|p| glob::matches(p, key))
        })
        .map(Frame::Bulk)
        .collect();
    Ok(Frame::Array(vec![Frame::Bulk(next), Frame::Array(keys)]))
}

/// INFO's text: `# Server` and `# Flotilla` sections, each shown when asked for by name or by
/// `all`/`default`/`everything`/no argument. Unknown sections show nothing, as in Redis.
async fn info(backend: &dyn KvBackend, sections: &[String]) -> String {
    let wants = |name: &str| {
        sections.is_empty()
            || sections.iter().any(|section| {
                matches!(section.as_str(), "all" | "default" | "everything") || section == name
            })
    };
    let mut text = String::new();
    if wants("server") {
        text.push_str("# Server\r\n");
        text.push_str(&format!("redis_version:{REDIS_VERSION}\r\n"));
        text.push_str("redis_mode:standalone\r\n");
        text.push_str(&format!("flotilla_version:{}\r\n", env!("CARGO_PKG_VERSION")));
    }
    if wants("flotilla") {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        text.push_str("# Flotilla\r\n");
        for (name, value) in backend.info().await {
            // A stray line break from the backend would forge extra INFO fields.
            let clean = |s: &str| s.replace(['\r', '\n'], " ");
            text.push_str(&format!("{}:{}\r\n", clean(&name), clean(&value)));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::backend::MemBackend;
    use super::*;

    fn parse(words: &[&str]) -> Result<Command, ReplyError> {
        Command::parse(words.iter().map(|word| word.as_bytes().to_vec()).collect())
    }

    fn err(line: &str) -> Result<Command, ReplyError> {
        Err(ReplyError(line.to_owned()))
    }

    #[test]
    fn names_are_case_insensitive() {
        assert_eq!(parse(&["gEt", "k"]), Ok(Command::Get(b"k".to_vec())));
        assert_eq!(parse(&["PING"]), Ok(Command::Ping(None)));
        assert_eq!(parse(&["ping", "hi"]), Ok(Command::Ping(Some(b"hi".to_vec()))));
    }

    #[test]
    fn arity_errors_use_redis_wording() {
        assert_eq!(parse(&["GET"]), err("ERR wrong number of arguments for 'get' command"));
        assert_eq!(parse(&["get", "a", "b"]), err("ERR wrong number of arguments for 'get' command"));
        assert_eq!(parse(&["ping", "a", "b"]), err("ERR wrong number of arguments for 'ping' command"));
        assert_eq!(parse(&["mset", "a"]), err("ERR wrong number of arguments for 'mset' command"));
        assert_eq!(parse(&["mset", "a", "1", "b"]), err("ERR wrong number of arguments for 'mset' command"));
        assert_eq!(parse(&["del"]), err("ERR wrong number of arguments for 'del' command"));
        assert_eq!(
            parse(&["client", "setname"]),
            err("ERR wrong number of arguments for 'client|setname' command")
        );
    }

    #[test]
    fn set_options() {
        let set = |cond| Ok(Command::Set { key: b"k".to_vec(), value: b"v".to_vec(), cond });
        assert_eq!(parse(&["set", "k", "v"]), set(SetCondition::Always));
        assert_eq!(parse(&["set", "k", "v", "nx"]), set(SetCondition::IfAbsent));
        assert_eq!(parse(&["SET", "k", "v", "XX"]), set(SetCondition::IfPresent));
        assert_eq!(parse(&["set", "k", "v", "nx", "xx"]), err("ERR syntax error"));
        assert_eq!(parse(&["set", "k", "v", "bogus"]), err("ERR syntax error"));
        assert_eq!(parse(&["set", "k", "v", "ex"]), err("ERR syntax error"));
        let expiry = err("ERR expiry options are not supported by flotilla (keys never expire)");
        for option in [&["ex", "10"][..], &["PX", "5"], &["exat", "1"], &["pxat", "1"], &["keepttl"]] {
            let mut words = vec!["set", "k", "v"];
            words.extend_from_slice(option);
            assert_eq!(parse(&words), expiry, "{option:?}");
        }
        assert_eq!(parse(&["setex", "k", "10", "v"]), expiry);
        assert_eq!(parse(&["expire", "k", "10"]), expiry);
    }

    #[test]
    fn integer_arguments() {
        assert_eq!(parse(&["incrby", "k", "-5"]), Ok(Command::IncrBy { key: b"k".to_vec(), delta: -5 }));
        assert_eq!(parse(&["decrby", "k", "5"]), Ok(Command::IncrBy { key: b"k".to_vec(), delta: -5 }));
        assert_eq!(parse(&["incrby", "k", "x"]), err("ERR value is not an integer or out of range"));
        assert_eq!(parse(&["decrby", "k", "-9223372036854775808"]), err("ERR decrement would overflow"));
        assert_eq!(parse(&["select", "0"]), Ok(Command::Select));
        assert_eq!(parse(&["select", "1"]), err("ERR DB index is out of range"));
    }

    #[test]
    fn unknown_commands_quote_their_args_like_redis() {
        assert_eq!(parse(&["xyz"]), err("ERR unknown command 'xyz', with args beginning with: "));
        assert_eq!(
            parse(&["Foo", "a", "b"]),
            err("ERR unknown command 'Foo', with args beginning with: 'a' 'b' ")
        );
        let long = "x".repeat(300);
        let Err(error) = parse(&["foo", &long, "next"]) else { panic!("accepted") };
        assert!(error.line().len() < 300, "{}", error.line());
        assert!(!error.line().contains("next"));
        assert_eq!(parse(&["multi"]), err("ERR MULTI/EXEC transactions are not supported yet"));
        assert_eq!(parse(&["watch", "k"]), err("ERR MULTI/EXEC transactions are not supported yet"));
    }

    #[test]
    fn size_limits() {
        let big_key = "k".repeat(KEY_BYTES_MAX + 1);
        assert!(parse(&["get", &big_key]).is_err());
        assert!(parse(&["get", &big_key[1..]]).is_ok());
        let big_value = vec![b'v'; VALUE_BYTES_MAX + 1];
        let words = vec![b"set".to_vec(), b"k".to_vec(), big_value];
        assert_eq!(
            Command::parse(words),
            Err(ReplyError::err(format!("value exceeds maximum allowed size of {VALUE_BYTES_MAX} bytes")))
        );
    }

    #[test]
    fn connection_commands() {
        assert_eq!(parse(&["command", "docs"]), Ok(Command::CommandDocs));
        assert_eq!(parse(&["COMMAND"]), Ok(Command::CommandDocs));
        assert_eq!(parse(&["command", "nope"]), err("ERR unknown subcommand 'nope'. Try COMMAND HELP."));
        assert_eq!(parse(&["client", "setname", "app"]), Ok(Command::ClientSetName(Some(b"app".to_vec()))));
        assert!(parse(&["client", "setname", "has space"]).is_err());
        assert_eq!(parse(&["client", "setinfo", "lib-name", "redis-py"]), Ok(Command::ClientSetInfo));
        assert_eq!(parse(&["hello", "3"]), err("NOPROTO unsupported protocol version"));
        assert_eq!(parse(&["hello", "2", "setname", "n"]), Ok(Command::Hello { name: Some(b"n".to_vec()) }));
        assert!(parse(&["hello", "2", "auth", "u", "p"]).is_err());
        assert_eq!(parse(&["quit"]), Ok(Command::Quit));
    }

    #[test]
    fn scan_arguments() {
        let scan = |start: &[u8], pattern: Option<&str>, count| {
            Ok(Command::Scan(ScanArgs {
                start: start.to_vec(),
                pattern: pattern.map(|p| p.as_bytes().to_vec()),
                count,
                strings_only_filtered_out: false,
            }))
        };
        assert_eq!(parse(&["scan", "0"]), scan(b"", None, SCAN_COUNT_DEFAULT));
        assert_eq!(parse(&["scan", "1097", "match", "a*", "COUNT", "5"]), scan(b"a", Some("a*"), 5));
        assert_eq!(parse(&["scan", "0", "count", "100000"]), scan(b"", None, SCAN_COUNT_MAX));
        assert_eq!(parse(&["scan", "0", "count", "0"]), err("ERR syntax error"));
        assert_eq!(parse(&["scan", "0", "count"]), err("ERR syntax error"));
        assert_eq!(parse(&["scan", "abc"]), err("ERR invalid cursor"));
        assert_eq!(parse(&["scan", "1256"]), err("ERR invalid cursor"));
        assert_eq!(parse(&["scan", "10"]), err("ERR invalid cursor"));
    }

    proptest! {
        #[test]
        fn cursors_round_trip(key in proptest::collection::vec(any::<u8>(), 1..40)) {
            let cursor = encode_cursor(&key);
            prop_assert!(cursor.iter().all(u8::is_ascii_digit));
            prop_assert_eq!(decode_cursor(&cursor), Ok(key));
        }

        #[test]
        fn parse_never_panics(words in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..8)) {
            let _ = Command::parse(words);
        }
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    async fn run(backend: &MemBackend, words: &[&str]) -> Frame {
        match parse(words) {
            Ok(command) => command.execute(backend, &mut Session::new(7)).await,
            Err(error) => error.to_frame(),
        }
    }

    #[tokio::test]
    async fn execute_against_mem_backend() {
        let backend = MemBackend::new();
        assert_eq!(run(&backend, &["set", "a", "1"]).await, Frame::ok());
        assert_eq!(run(&backend, &["set", "a", "2", "nx"]).await, Frame::NullBulk);
        assert_eq!(run(&backend, &["setnx", "b", "x"]).await, Frame::Integer(1));
        assert_eq!(run(&backend, &["exists", "a", "a", "zz"]).await, Frame::Integer(2));
        assert_eq!(run(&backend, &["incrby", "a", "41"]).await, Frame::Integer(42));
        assert_eq!(
            run(&backend, &["incr", "b"]).await,
            Frame::Error("ERR value is not an integer or out of range".into())
        );
        assert_eq!(run(&backend, &["strlen", "a"]).await, Frame::Integer(2));
        assert_eq!(
            run(&backend, &["mget", "a", "nope", "b"]).await,
            Frame::Array(vec![Frame::bulk("42"), Frame::NullBulk, Frame::bulk("x")])
        );
        assert_eq!(run(&backend, &["client", "id"]).await, Frame::Integer(7));
        let Frame::Bulk(info) = run(&backend, &["info", "flotilla"]).await else { panic!("info is a bulk") };
        assert_eq!(String::from_utf8_lossy(&info), "# Flotilla\r\nrole:memory\r\nkeys:2\r\n");
    }

    #[tokio::test]
    async fn scan_narrows_to_the_match_prefix() {
        let backend = MemBackend::new();
        for key in ["a1", "b1", "b2", "b3", "c1"] {
            run(&backend, &["set", key, "v"]).await;
        }
        let page = run(&backend, &["scan", "0", "match", "b*", "count", "2"]).await;
        let Frame::Array(parts) = page else { panic!("scan reply {page:?}") };
        assert_eq!(parts[1], Frame::Array(vec![Frame::bulk("b1"), Frame::bulk("b2")]));
        let Frame::Bulk(cursor) = &parts[0] else { panic!("cursor {parts:?}") };
        let cursor = String::from_utf8_lossy(cursor).into_owned();
        let page = run(&backend, &["scan", &cursor, "match", "b*", "count", "2"]).await;
        assert_eq!(page, Frame::Array(vec![Frame::bulk("0"), Frame::Array(vec![Frame::bulk("b3")])]));
        let page = run(&backend, &["scan", "0", "match", "b?", "type", "hash"]).await;
        assert_eq!(page, Frame::Array(vec![Frame::bulk("0"), Frame::Array(vec![])]));
    }
}
