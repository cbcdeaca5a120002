//! What a history is made of: operations on one key each, with the time they were called and
//! returned, and what came of them; a thread-safe recorder for workloads; JSON-lines files.

use std::fmt;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A key of the store (binary-safe, as in RESP).
pub type Key = Vec<u8>;
/// A value of the store (binary-safe, as in RESP).
pub type Value = Vec<u8>;

/// What an operation asks of its key's register. Every kind acts on one key only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// `GET`: returns `OpResult::Value(current)`.
    Read,
    /// `SET k v` (`Some(v)`, returns `Done`) or `DEL k` (`None`, returns `Int(1)` if the key
    /// existed, `Int(0)` if not; `Done` when the caller didn't look).
    Write(#[serde(with = "bytes_serde::opt")] Option<Value>),
    /// `SET k v NX`: sets only if the key is absent; returns `Flag(whether it set)`.
    SetNx(#[serde(with = "bytes_serde::plain")] Value),
    /// `SET k v XX`: sets only if the key is present; returns `Flag(whether it set)`.
    SetXx(#[serde(with = "bytes_serde::plain")] Value),
    /// `INCRBY k by` (absent counts as 0): returns `Int(new value)`, or `Error` (and changes
    /// nothing) when the value is not a canonical i64 or the sum overflows.
    Incr(i64),
    /// `APPEND k v` (absent counts as empty): returns `Int(new length)`.
    Append(#[serde(with = "bytes_serde::plain")] Value),
}

impl OpKind {
    /// `DEL`.
    pub fn delete() -> OpKind {
        OpKind::Write(None)
    }

    /// `SET k v`.
    pub fn write(v: impl Into<Value>) -> OpKind {
        OpKind::Write(Some(v.into()))
    }
}

/// What an operation returned. `Done` means "returned, with nothing to compare": it matches any
/// result the model computes (use it for `SET`, or whenever the workload didn't keep the reply).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpResult {
    Done,
    /// A read's observation: `None` = the key was absent (nil).
    Value(#[serde(with = "bytes_serde::opt")] Option<Value>),
    /// `SetNx` / `SetXx`: whether it set.
    Flag(bool),
    /// `Incr`: the new value; `Append`: the new length; `Write(None)` (DEL): keys removed.
    Int(i64),
    /// The server answered with a semantic error after executing the operation (e.g. INCR on
    /// a non-integer): it happened and changed nothing. Not for transport errors or refusals
    /// (use `Outcome::Failed` or `Outcome::Unknown` for those).
    Error,
}

/// What is known of whether an operation took effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It returned this result (and so took effect exactly once, between call and return).
    Ok(OpResult),
    /// It definitely did not take effect (e.g. refused before it was proposed).
    Failed,
    /// It may or may not have taken effect, at any time after its call (timeouts, connection
    /// drops, crashes): the checker treats its return as infinitely late and its result as
    /// unseen, and may leave it out.
    Unknown,
}

/// One operation of one client on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub client: u64,
    #[serde(with = "bytes_serde::plain")]
    pub key: Key,
    pub kind: OpKind,
    /// When it was called, ns since the test started.
    pub call: u64,
    /// When it returned, ns since the test started; `None` = never returned. Required for
    /// `Outcome::Ok`; ignored for `Outcome::Unknown` (treated as never).
    pub ret: Option<u64>,
    pub outcome: Outcome,
}

impl Op {
    pub fn new(
        client: u64,
        key: impl Into<Key>,
        kind: OpKind,
        call: u64,
        ret: Option<u64>,
        outcome: Outcome,
    ) -> Op {
        Op { client, key: key.into(), kind, call, ret, outcome }
    }
}

impl fmt::Display for Op {
    /// `client 3 read key "k" -> "v" [1.000200ms .. 1.300000ms] ok`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.kind {
            OpKind::Read => write!(f, "read")?,
            OpKind::Write(Some(v)) => write!(f, "write {}", show(v))?,
            OpKind::Write(None) => write!(f, "delete")?,
            OpKind::SetNx(v) => write!(f, "set-nx {}", show(v))?,
            OpKind::SetXx(v) => write!(f, "set-xx {}", show(v))?,
            OpKind::Incr(by) => write!(f, "incr {by}")?,
            OpKind::Append(v) => write!(f, "append {}", show(v))?,
        }
        write!(f, " key {} [{} .. ", show(&self.key), show_time(self.call))?;
        match self.ret {
            Some(t) => write!(f, "{}]", show_time(t))?,
            None => write!(f, "never]")?,
        }
        match &self.outcome {
            Outcome::Ok(r) => write!(f, " ok -> {}", show_result(r)),
            Outcome::Failed => write!(f, " FAILED (did not happen)"),
            Outcome::Unknown => write!(f, " UNKNOWN outcome"),
        }
    }
}

/// Bytes for people: a quoted string when printable UTF-8, else hex.
pub fn show(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

/// A register's state for people: `nil` or the value.
pub fn show_state(v: Option<&[u8]>) -> String {
    v.map_or_else(|| "nil".to_string(), show)
}

pub fn show_result(r: &OpResult) -> String {
    match r {
        OpResult::Done => "done".into(),
        OpResult::Value(v) => show_state(v.as_deref()),
        OpResult::Flag(b) => b.to_string(),
        OpResult::Int(i) => i.to_string(),
        OpResult::Error => "error".into(),
    }
}

/// ns as milliseconds with ns precision.
pub fn show_time(ns: u64) -> String {
    format!("{}.{:06}ms", ns / 1_000_000, ns % 1_000_000)
}

/// A call that has not returned yet; give it back to `Recorder::complete`.
#[derive(Clone, Debug)]
pub struct Pending {
    pub client: u64,
    pub key: Key,
    pub kind: OpKind,
    pub call: u64,
}

/// Collects the history of a test's clients: thread-safe (share it in an `Arc`), times in ns
/// since `Recorder::new`, from one monotonic clock.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder { start: Instant::now(), ops: Mutex::new(Vec::new()) }
    }

    /// ns since the recorder was made.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Call this right before sending the request.
    pub fn invoke(&self, client: u64, key: impl Into<Key>, kind: OpKind) -> Pending {
        Pending { client, key: key.into(), kind, call: self.now() }
    }

    /// Call this right after the reply (or the error, or the timeout). Returns the op recorded.
    pub fn complete(&self, p: Pending, outcome: Outcome) -> Op {
        let op =
            Op { client: p.client, key: p.key, kind: p.kind, call: p.call, ret: Some(self.now()), outcome };
        self.record(op.clone());
        op
    }

    /// Records an op made elsewhere (same clock, please).
    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    pub fn len(&self) -> usize {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Everything recorded so far, in call order.
    pub fn history(&self) -> Vec<Op> {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ops.sort_by_key(|o| o.call);
        ops
    }
}

/// Writes a history as JSON lines, one op a line (bytes as strings when UTF-8, else as arrays).
pub fn save_history(path: impl AsRef<Path>, history: &[Op]) -> std::io::Result<()> {
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    for op in history {
        serde_json::to_writer(&mut w, op)?;
        w.write_all(b"\n")?;
    }
    w.flush()
}

/// Reads a history written by `save_history` (blank lines are skipped).
pub fn load_history(path: impl AsRef<Path>) -> std::io::Result<Vec<Op>> {
    let r = BufReader::new(std::fs::File::open(path)?);
    let mut ops = Vec::new();
    for (i, line) in r.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("line {}: {e}", i + 1))
        })?;
        ops.push(op);
    }
    Ok(ops)
}

/// Bytes in JSON: a string when valid UTF-8, else an array of numbers; both are read back.
mod bytes_serde {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::ser::Serializer;

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or an array of bytes")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
            Ok(v.as_bytes().to_vec())
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    fn ser<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(v) {
            Ok(t) => s.serialize_str(t),
            Err(_) => s.collect_seq(v.iter()),
        }
    }

    pub mod plain {
        use serde::{Deserializer, Serializer};

        pub fn serialize<T: AsRef<[u8]> + ?Sized, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
            super::ser(v.as_ref(), s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            d.deserialize_any(super::BytesVisitor)
        }
    }

    pub mod opt {
        use std::fmt;

        use serde::de::{self, Deserializer, Visitor};
        use serde::ser::Serializer;

        struct Some_<'a>(&'a [u8]);

        impl serde::Serialize for Some_<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                super::ser(self.0, s)
            }
        }

        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                None => s.serialize_none(),
                Some(b) => s.serialize_some(&Some_(b)),
            }
        }

        struct OptVisitor;

        impl<'de> Visitor<'de> for OptVisitor {
            type Value = Option<Vec<u8>>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("null, a string or an array of bytes")
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(super::BytesVisitor).map(Some)
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            d.deserialize_option(OptVisitor)
        }
    }
}
