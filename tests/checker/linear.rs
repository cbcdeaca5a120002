//! Per-key linearizability: the history is split by key (registers are independent, so the
//! whole is linearizable iff every key is), and each key gets a depth-first search for a
//! linearization in the style of Wing & Gong and Lowe, with Porcupine's memo of the
//! configurations already explored (which ops are linearized, as a bitset, and the register's
//! state then). Ok ops must be placed inside their intervals; unknown-outcome ops may be
//! placed anywhere after their call, or left out; failed ops are left out.
//!
//! What keeps the search small, without changing its answer:
//! - an ok op that changes the state in no state where it agrees with what it returned (a read;
//!   a SET NX / SET XX that didn't set; a DEL that found nothing; an INCR that failed) is
//!   linearized right away when it may go next and agrees with the state there, with no
//!   alternative tried: any linearization from that point can be changed into one that places
//!   it first, since where it stood it left the state as it found it;
//! - only linearizations where no unknown-outcome op could be dropped, or moved after the op
//!   that follows it, are looked at (see `may_follow`): there is one if there is any;
//! - on a key with only reads and unchecked writes (`SET`, and `DEL` recorded as `Done`): an
//!   unknown-outcome write whose value no read saw is dropped, and an ok one is placed just
//!   before the first write placed once it may go (no read can follow it);
//! - candidates are tried best first: the op that returns first, the ops after which it can
//!   go, the rest by return; and a first pass places unknown-outcome ops only right before a
//!   required op that needs them. Only if that pass finds nothing does the full search run.
//!
//! A key whose search exceeds the budget (`CheckOptions`) gets `Verdict::Unknown`: hot keys
//! with many concurrent clients and many unknown-outcome ops (INCR especially) cost the most.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::history::{
    save_history, show, show_result, show_state, Key, Op, OpKind, OpResult, Outcome, Value,
};
use super::model;

/// Budgets of the search, per key. A key whose search runs out of one gets `Verdict::Unknown`.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Configurations (linearized set + state) the search may memoize.
    pub max_states: u64,
    /// Bytes the memo may hold.
    pub max_memo_bytes: usize,
    /// Wall time for one key's search.
    pub timeout: Option<Duration>,
    /// Keys checked at once; 0 = one per core.
    pub threads: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_states: 5_000_000,
            max_memo_bytes: 1 << 30,
            timeout: Some(Duration::from_secs(60)),
            threads: 0,
        }
    }
}

/// The answer for one key.
#[derive(Clone, Debug)]
pub enum Verdict {
    Linearizable,
    NotLinearizable(Box<Violation>),
    /// The search ran out of budget: neither a pass nor a proven violation.
    Unknown {
        reason: String,
        /// The furthest the search got before it stopped (a failed attempt, not a violation).
        furthest: Option<Box<Violation>>,
    },
    /// The key's history can't be checked as given (e.g. an ok op with no return time).
    Malformed(Vec<String>),
}

/// Why a key is not linearizable: the longest partial linearization the search found, and the
/// ops that could have come next, each of which contradicts the model there.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Indices into the history, in the order of that partial linearization.
    pub prefix: Vec<usize>,
    /// The last (up to 10) ops of `prefix`, with their indices.
    pub prefix_tail: Vec<(usize, Op)>,
    /// The register after `prefix` (`None` = absent).
    pub state: Option<Value>,
    /// Of the ops not in `prefix`, the one that returned first: it had to be placed before
    /// every op called after its return, and it (like all the candidates) can't be.
    pub blocking: Option<(usize, Op)>,
    /// Every op that could have been linearized next, with what the model would have returned.
    pub candidates: Vec<Candidate>,
}

#[derive(Clone, Debug)]
pub struct Candidate {
    pub index: usize,
    pub op: Op,
    pub model: OpResult,
}

#[derive(Clone, Debug, Default)]
pub struct SearchStats {
    /// Configurations memoized (each one visited once).
    pub states: u64,
    /// Times a configuration was reached again and skipped.
    pub memo_hits: u64,
    /// The longest partial linearization.
    pub max_depth: usize,
    pub elapsed: Duration,
}

#[derive(Clone, Debug)]
pub struct KeyReport {
    pub key: Key,
    /// Ops on this key in the history.
    pub ops: usize,
    /// Ok ops, which had to be placed.
    pub required: usize,
    /// Unknown-outcome ops that could be placed or left out.
    pub optional: usize,
    /// Failed ops, and ops that can't matter (unknown or unchecked reads, unknown writes nobody
    /// read on a read/write-only key).
    pub dropped: usize,
    pub stats: SearchStats,
    pub verdict: Verdict,
}

/// The verdict of a whole history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overall {
    Linearizable,
    NotLinearizable,
    Malformed,
    /// Some key's search ran out of budget (and no key is proven not linearizable).
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Report {
    /// One per key, in key order.
    pub keys: Vec<KeyReport>,
    pub ops: usize,
    /// Ops by outcome.
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub elapsed: Duration,
}

impl Report {
    pub fn overall(&self) -> Overall {
        let has = |f: fn(&Verdict) -> bool| self.keys.iter().any(|k| f(&k.verdict));
        if has(|v| matches!(v, Verdict::NotLinearizable(_))) {
            Overall::NotLinearizable
        } else if has(|v| matches!(v, Verdict::Malformed(_))) {
            Overall::Malformed
        } else if has(|v| matches!(v, Verdict::Unknown { .. })) {
            Overall::Unknown
        } else {
            Overall::Linearizable
        }
    }

    /// True only if every key was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.overall() == Overall::Linearizable
    }

    /// True if some key was proven not linearizable.
    pub fn has_violation(&self) -> bool {
        self.overall() == Overall::NotLinearizable
    }

    /// The keys that are not proven linearizable.
    pub fn failures(&self) -> impl Iterator<Item = &KeyReport> {
        self.keys.iter().filter(|k| !matches!(k.verdict, Verdict::Linearizable))
    }

    /// The report of one key.
    pub fn key(&self, key: &[u8]) -> Option<&KeyReport> {
        self.keys.iter().find(|k| k.key == key)
    }

    /// (linearizable, not linearizable, unknown, malformed) keys.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for k in &self.keys {
            match k.verdict {
                Verdict::Linearizable => c.0 += 1,
                Verdict::NotLinearizable(_) => c.1 += 1,
                Verdict::Unknown { .. } => c.2 += 1,
                Verdict::Malformed(_) => c.3 += 1,
            }
        }
        c
    }

    /// Configurations explored over all keys.
    pub fn states(&self) -> u64 {
        self.keys.iter().map(|k| k.stats.states).sum()
    }

    /// The most configurations explored for one key.
    pub fn max_key_states(&self) -> u64 {
        self.keys.iter().map(|k| k.stats.states).max().unwrap_or(0)
    }

    /// Panics with the report unless every key is proven linearizable.
    pub fn assert_linearizable(&self) {
        assert!(self.is_linearizable(), "{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (lin, not, unknown, malformed) = self.counts();
        let overall = match self.overall() {
            Overall::Linearizable => "linearizable",
            Overall::NotLinearizable => "NOT LINEARIZABLE",
            Overall::Malformed => "MALFORMED HISTORY",
            Overall::Unknown => "UNKNOWN (search budget exhausted; not a pass)",
        };
        writeln!(
            f,
            "history {overall}: {} keys ({lin} linearizable, {not} not linearizable, {unknown} unknown, \
             {malformed} malformed); {} ops ({} ok, {} failed, {} unknown outcome); {} states \
             explored in {:.3}s",
            self.keys.len(),
            self.ops,
            self.ok,
            self.failed,
            self.unknown,
            self.states(),
            self.elapsed.as_secs_f64()
        )?;
        for (shown, k) in self.failures().enumerate() {
            if shown == 5 {
                writeln!(f, "... and {} more keys not proven linearizable", not + unknown + malformed - 5)?;
                break;
            }
            write!(f, "{k}")?;
        }
        Ok(())
    }
}

impl fmt::Display for KeyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.verdict {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable(_) => "NOT linearizable",
            Verdict::Unknown { .. } => "UNKNOWN",
            Verdict::Malformed(_) => "MALFORMED",
        };
        writeln!(
            f,
            "key {} {what}: {} ops ({} placed, {} optional, {} dropped); {} states, {} memo hits, \
             deepest {} in {:.3}s",
            show(&self.key),
            self.ops,
            self.required,
            self.optional,
            self.dropped,
            self.stats.states,
            self.stats.memo_hits,
            self.stats.max_depth,
            self.stats.elapsed.as_secs_f64()
        )?;
        match &self.verdict {
            Verdict::Linearizable => Ok(()),
            Verdict::Unknown { reason, furthest } => {
                writeln!(f, "  {reason}")?;
                match furthest {
                    Some(v) => write!(f, "  the furthest attempt (not a violation):\n{v}"),
                    None => Ok(()),
                }
            }
            Verdict::Malformed(problems) => {
                for p in problems.iter().take(10) {
                    writeln!(f, "  {p}")?;
                }
                Ok(())
            }
            Verdict::NotLinearizable(v) => write!(f, "{v}"),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  longest partial linearization: {} ops, leaving the register at {}",
            self.prefix.len(),
            show_state(self.state.as_deref())
        )?;
        if self.prefix.len() > self.prefix_tail.len() {
            writeln!(f, "    ... {} earlier ops", self.prefix.len() - self.prefix_tail.len())?;
        }
        for (i, op) in &self.prefix_tail {
            writeln!(f, "    #{i} {op}")?;
        }
        if let Some((i, op)) = &self.blocking {
            writeln!(f, "  first to return of the ops left: #{i} {op}")?;
        }
        writeln!(f, "  no op can go next; every candidate contradicts the register:")?;
        for c in &self.candidates {
            let seen = match &c.op.outcome {
                Outcome::Ok(r) => show_result(r),
                _ => "(unseen)".into(),
            };
            writeln!(
                f,
                "    #{} {}: returned {seen}, the register would return {}",
                c.index,
                c.op,
                show_result(&c.model)
            )?;
        }
        Ok(())
    }
}

/// Checks a history with the default budgets.
pub fn check(history: &[Op]) -> Report {
    check_with(history, &CheckOptions::default())
}

/// Checks a history: each key on its own, several at once.
pub fn check_with(history: &[Op], opts: &CheckOptions) -> Report {
    let start = Instant::now();
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(&op.key).or_default().push(i);
    }
    let keys: Vec<(&[u8], Vec<usize>)> = by_key.into_iter().collect();
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| Reverse(keys[i].1.len()));
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, keys.len().max(1));
    let results: Mutex<Vec<Option<KeyReport>>> = Mutex::new(vec![None; keys.len()]);
    let next = AtomicUsize::new(0);
    let work = || loop {
        let j = next.fetch_add(1, Ordering::Relaxed);
        let Some(&i) = order.get(j) else { break };
        let r = check_key(keys[i].0, history, &keys[i].1, opts);
        results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
    };
    if threads == 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(work);
            }
        });
    }
    let keys: Vec<KeyReport> =
        results.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().flatten().collect();
    let count = |f: fn(&Outcome) -> bool| history.iter().filter(|o| f(&o.outcome)).count();
    Report {
        keys,
        ops: history.len(),
        ok: count(|o| matches!(o, Outcome::Ok(_))),
        failed: count(|o| matches!(o, Outcome::Failed)),
        unknown: count(|o| matches!(o, Outcome::Unknown)),
        elapsed: start.elapsed(),
    }
}

/// Checks a history and panics with the report unless it is proven linearizable, after saving
/// the history as JSON lines (for `load_history`) to `$FLOTILLA_HISTORY_DIR`, or else the
/// target's tmp dir, as `<name>.history.jsonl`. Returns the report otherwise (for its stats).
pub fn assert_linearizable(history: &[Op], name: &str) -> Report {
    let report = check(history);
    if !report.is_linearizable() {
        let path = history_path(name);
        let saved = match save_history(&path, history) {
            Ok(()) => format!("history saved to {}", path.display()),
            Err(e) => format!("history could not be saved to {}: {e}", path.display()),
        };
        panic!("{report}{saved}");
    }
    report
}

/// Where `assert_linearizable` saves a history called `name`.
pub fn history_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("FLOTILLA_HISTORY_DIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_TMPDIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    let _ = std::fs::create_dir_all(&dir);
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    dir.join(format!("{safe}.history.jsonl"))
}

const END: u32 = u32::MAX;

/// How an op moves the register, precomputed where that needs no arithmetic on values.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// A read that saw this state.
    Read(u32),
    /// SET / DEL; `existed`: what a DEL's count said.
    Put { to: u32, existed: Option<bool> },
    /// SET NX (`if_present` false) / SET XX; `set`: what it said.
    PutIf { to: u32, if_present: bool, set: Option<bool> },
    /// INCR / APPEND: computed by the model, cached per state.
    Compute,
}

/// One key's register: interned states (0 = absent) and each op's effect on them.
#[derive(Debug)]
struct Machine<'h> {
    history: &'h [Op],
    /// Local op → index in the history.
    global: Vec<usize>,
    steps: Vec<Step>,
    /// Ops that leave the state as it is wherever they agree with their results.
    pure: Vec<bool>,
    /// On a key of reads and unchecked writes only: writes whose value no read saw. Such a
    /// write is followed in any linearization by another write (or by nothing), so it can be
    /// moved to just before the first write placed once it may go: the search places it there.
    dead: Vec<bool>,
    /// Writes, before which the dead writes that may go are placed.
    write: Vec<bool>,
    /// Writes that don't look at the state.
    blind: Vec<bool>,
    /// Blind writes whose value no read saw: when the op that returns first is a blind write,
    /// these are tried before it (as if overwritten at once).
    unread: Vec<bool>,
    values: Vec<Option<Value>>,
    ids: HashMap<Value, u32>,
    computed: HashMap<(u32, u32), Option<u32>>,
}

impl Machine<'_> {
    fn intern(&mut self, v: Option<&[u8]>) -> u32 {
        let Some(v) = v else { return 0 };
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        let id = u32::try_from(self.values.len()).expect("too many states");
        self.values.push(Some(v.to_vec()));
        self.ids.insert(v.to_vec(), id);
        id
    }

    fn op(&self, local: u32) -> &Op {
        &self.history[self.global[local as usize]]
    }

    /// The state after `op` in `state`, or `None` if the op's result contradicts the model.
    fn apply(&mut self, state: u32, op: u32) -> Option<u32> {
        match self.steps[op as usize] {
            Step::Read(seen) => (seen == state).then_some(state),
            Step::Put { to, existed } => match existed {
                Some(e) if e != (state != 0) => None,
                _ => Some(to),
            },
            Step::PutIf { to, if_present, set } => {
                let sets = (state != 0) == if_present;
                if set.is_some_and(|s| s != sets) {
                    None
                } else if sets {
                    Some(to)
                } else {
                    Some(state)
                }
            }
            Step::Compute => {
                if let Some(&r) = self.computed.get(&(state, op)) {
                    return r;
                }
                let o = self.op(op);
                let (next, out) = model::step(self.values[state as usize].as_deref(), &o.kind);
                let agrees = match &o.outcome {
                    Outcome::Ok(seen) => model::agrees(seen, &out),
                    _ => true,
                };
                let r = agrees.then(|| self.intern(next.as_deref()));
                self.computed.insert((state, op), r);
                r
            }
        }
    }

    /// What the model says `op` returns in `state`.
    fn output(&self, state: u32, op: u32) -> OpResult {
        model::step(self.values[state as usize].as_deref(), &self.op(op).kind).1
    }
}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct Pass(u64);

impl Hasher for Pass {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The linearized set of a configuration, in two bitsets: required ops (numbered in call
/// order) and optional ones. Only the required ops between the leading full words and the last
/// set bit can differ between configurations of one search, so the memo keeps just those.
struct Bits {
    req: Vec<u64>,
    opt: Vec<u64>,
    /// Leading words of `req` that are all ones.
    full: usize,
    /// One past the last non-zero word of `req` / `opt`.
    req_end: usize,
    opt_end: usize,
}

impl Bits {
    fn new(required: usize, optional: usize) -> Bits {
        Bits {
            req: vec![0; required.div_ceil(64)],
            opt: vec![0; optional.div_ceil(64)],
            full: 0,
            req_end: 0,
            opt_end: 0,
        }
    }

    fn set(&mut self, words: Words, bit: usize) {
        let (w, mask) = (bit / 64, 1u64 << (bit % 64));
        match words {
            Words::Req => {
                self.req[w] |= mask;
                self.req_end = self.req_end.max(w + 1);
                while self.full < self.req.len() && self.req[self.full] == u64::MAX {
                    self.full += 1;
                }
            }
            Words::Opt => {
                self.opt[w] |= mask;
                self.opt_end = self.opt_end.max(w + 1);
            }
        }
    }

    fn clear(&mut self, words: Words, bit: usize) {
        let (w, mask) = (bit / 64, 1u64 << (bit % 64));
        match words {
            Words::Req => {
                self.req[w] &= !mask;
                self.full = self.full.min(w);
                while self.req_end > 0 && self.req[self.req_end - 1] == 0 {
                    self.req_end -= 1;
                }
            }
            Words::Opt => {
                self.opt[w] &= !mask;
                while self.opt_end > 0 && self.opt[self.opt_end - 1] == 0 {
                    self.opt_end -= 1;
                }
            }
        }
    }

    /// The words that tell this configuration apart: required ones past the full prefix.
    fn window(&self) -> &[u64] {
        &self.req[self.full..self.req_end.max(self.full)]
    }

    fn optional(&self) -> &[u64] {
        &self.opt[..self.opt_end]
    }
}

#[derive(Clone, Copy)]
enum Words {
    Req,
    Opt,
}

struct MemoEntry {
    /// Where its words start in the arena; `full`, and the lengths of its two parts.
    at: usize,
    full: u32,
    req_len: u32,
    opt_len: u32,
    state: u32,
    tag: u64,
    chain: u32,
}

/// The configurations already explored: (linearized set, state, the unknown-outcome op just
/// placed if any), kept whole, so there are no false hits.
struct Memo {
    arena: Vec<u64>,
    entries: Vec<MemoEntry>,
    heads: HashMap<u64, u32, BuildHasherDefault<Pass>>,
}

impl Memo {
    fn new() -> Memo {
        Memo { arena: Vec::new(), entries: Vec::new(), heads: HashMap::default() }
    }

    /// Adds a configuration; false if it was there already.
    fn insert(&mut self, hash: u64, bits: &Bits, state: u32, tag: u64) -> bool {
        let (win, opt) = (bits.window(), bits.optional());
        let head = self.heads.get(&hash).copied().unwrap_or(END);
        let mut i = head;
        while i != END {
            let e = &self.entries[i as usize];
            if e.state == state
                && e.tag == tag
                && e.full as usize == bits.full
                && e.req_len as usize == win.len()
                && e.opt_len as usize == opt.len()
                && self.arena[e.at..e.at + win.len()] == *win
                && self.arena[e.at + win.len()..e.at + win.len() + opt.len()] == *opt
            {
                return false;
            }
            i = e.chain;
        }
        let id = u32::try_from(self.entries.len()).expect("memo too big");
        self.entries.push(MemoEntry {
            at: self.arena.len(),
            full: bits.full as u32,
            req_len: win.len() as u32,
            opt_len: opt.len() as u32,
            state,
            tag,
            chain: head,
        });
        self.arena.extend_from_slice(win);
        self.arena.extend_from_slice(opt);
        self.heads.insert(hash, id);
        true
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn bytes(&self) -> usize {
        self.arena.len() * 8 + self.entries.len() * (std::mem::size_of::<MemoEntry>() + 16)
    }
}

struct Frame {
    state: u32,
    min_ret: u64,
    /// How many ops were placed to get here (a write and the dead writes before it).
    placed: usize,
    /// Its candidates are `cands[pos..end]`, from `start`.
    start: usize,
    pos: usize,
    end: usize,
}

/// The furthest the search got: the partial linearization, and what stopped it.
struct Deepest {
    path: Vec<u32>,
    state: u32,
    blocking: Option<u32>,
    candidates: Vec<u32>,
}

enum End {
    Linearizable,
    Violation(Deepest),
    Budget(String, Option<Deepest>),
}

fn unlink(next: &mut [u32], prev: &mut [u32], i: u32) {
    let (p, q) = (prev[i as usize], next[i as usize]);
    next[p as usize] = q;
    prev[q as usize] = p;
}

fn relink(next: &mut [u32], prev: &mut [u32], i: u32) {
    let (p, q) = (prev[i as usize], next[i as usize]);
    next[p as usize] = i;
    prev[q as usize] = i;
}

fn link(next: &mut [u32], prev: &mut [u32], sentinel: u32, items: impl Iterator<Item = u32>) {
    let mut last = sentinel;
    for i in items {
        next[last as usize] = i;
        prev[i as usize] = last;
        last = i;
    }
    next[last as usize] = sentinel;
    prev[sentinel as usize] = last;
}

/// The search over one key's ops: local numbers 0..required are the required ops in call
/// order, then the optional ones in call order.
struct Search<'m, 'h> {
    m: &'m mut Machine<'h>,
    n: usize,
    /// Local numbers below this are required.
    required: usize,
    call: Vec<u64>,
    ret: Vec<u64>,
    /// Two call-ordered lists of the ops not linearized, sharing arrays: required ops from
    /// sentinel n, optional ops from sentinel n + 1.
    cnext: Vec<u32>,
    cprev: Vec<u32>,
    /// The required ops not linearized, by return (sentinel n).
    rnext: Vec<u32>,
    rprev: Vec<u32>,
    scratch: Vec<(u8, u64, u32)>,
    open_buf: Vec<u32>,
    /// The first pass: unknown-outcome ops are placed only right before a required op that
    /// needs them. It finds most linearizations fast, but its failure proves nothing.
    strict: bool,
}

impl Search<'_, '_> {
    fn is_required(&self, op: u32) -> bool {
        (op as usize) < self.required
    }

    fn words(&self, op: u32) -> (Words, usize) {
        if self.is_required(op) {
            (Words::Req, op as usize)
        } else {
            (Words::Opt, op as usize - self.required)
        }
    }

    fn lift(&mut self, op: u32) {
        unlink(&mut self.cnext, &mut self.cprev, op);
        if self.is_required(op) {
            unlink(&mut self.rnext, &mut self.rprev, op);
        }
    }

    fn unlift(&mut self, op: u32) {
        if self.is_required(op) {
            relink(&mut self.rnext, &mut self.rprev, op);
        }
        relink(&mut self.cnext, &mut self.cprev, op);
    }

    fn min_ret(&self) -> u64 {
        let first = self.rnext[self.n];
        if (first as usize) < self.n {
            self.ret[first as usize]
        } else {
            u64::MAX
        }
    }

    /// Appends to `out` the ops not linearized that may go next (all that must precede them
    /// are linearized) from one list (`n`: required, `n + 1`: optional), in call order.
    fn open(&self, list: usize, min_ret: u64, out: &mut Vec<u32>) {
        let mut i = self.cnext[list];
        while (i as usize) < self.n && self.call[i as usize] <= min_ret {
            out.push(i);
            i = self.cnext[i as usize];
        }
    }

    /// Appends the dead writes that may go now, but `except`.
    fn dead_open(&self, min_ret: u64, except: u32, out: &mut Vec<u32>) {
        let mut i = self.cnext[self.n];
        while (i as usize) < self.n && self.call[i as usize] <= min_ret {
            if self.m.dead[i as usize] && i != except {
                out.push(i);
            }
            i = self.cnext[i as usize];
        }
    }

    fn candidates(&self) -> Vec<u32> {
        let (min_ret, mut out) = (self.min_ret(), Vec::new());
        self.open(self.n, min_ret, &mut out);
        self.open(self.n + 1, min_ret, &mut out);
        out
    }

    /// Whether op `y` may follow unknown-outcome op `o`, placed in state `s`, now that the
    /// state is `t`. The search looks only at linearizations where no unknown-outcome op can be
    /// dropped or moved after the op that follows it; any linearization can be made one (drop
    /// or move such ops until none can be: each step drops one, moves one later, or puts two
    /// neighbouring unknown-outcome ops in index order). So `y` may not follow `o` if it
    /// agrees with `s` and leaves the same state there as it does in `t` (`o` can be dropped)
    /// or as `o` after it would (`o` can move after it; between two unknown-outcome ops, only
    /// when that puts them in index order).
    fn may_follow(&mut self, o: u32, s: u32, t: u32, y: u32) -> bool {
        let (Some(ys), Some(yt)) = (self.m.apply(s, y), self.m.apply(t, y)) else { return true };
        let drop = ys == yt;
        let swap = self.m.apply(ys, o) == Some(yt) && (self.is_required(y) || y < o);
        !(drop || swap)
    }

    /// Pushes the candidates of the configuration just reached, best first; returns its frame.
    /// `after`: the unknown-outcome op just placed, with the state it was placed in.
    fn frame(&mut self, state: u32, after: Option<(u32, u32)>, cands: &mut Vec<u32>) -> Frame {
        let start = cands.len();
        let min_ret = self.min_ret();
        let first = self.rnext[self.n];
        if first as usize >= self.n {
            // All required ops are placed: the search is over.
            return Frame { state, min_ret, placed: 0, start, pos: start, end: start };
        }
        // A pure op that agrees here goes next, with no alternative.
        let mut open = std::mem::take(&mut self.open_buf);
        open.clear();
        self.open(self.n, min_ret, &mut open);
        let required = open.len();
        self.open(self.n + 1, min_ret, &mut open);
        for &i in &open[..required] {
            if self.m.pure[i as usize] && self.m.apply(state, i) == Some(state) {
                cands.push(i);
                self.open_buf = open;
                return Frame { state, min_ret, placed: 0, start, pos: start, end: start + 1 };
            }
        }
        // The op that returns first must go soon: it first, then the ops after which it
        // agrees (required, then optional), then the other required ops by return (latest
        // placements first), then the other optional ops.
        let mut scored = std::mem::take(&mut self.scratch);
        scored.clear();
        for &i in &open[..required] {
            if let Some((o, s)) = after {
                if !self.may_follow(o, s, state, i) {
                    continue;
                }
            }
            let class = match self.m.apply(state, i) {
                None => 9,
                Some(_) if i == first => 1,
                Some(_) if self.m.unread[i as usize] && self.m.blind[first as usize] => 0,
                Some(next) if self.m.apply(next, first).is_some() => 2,
                Some(_) => 4,
            };
            scored.push((class, self.ret[i as usize], i));
        }
        for &i in &open[required..] {
            if self.strict && after.is_some() {
                break;
            }
            if let Some((o, s)) = after {
                if !self.may_follow(o, s, state, i) {
                    continue;
                }
            }
            let class = match self.m.apply(state, i) {
                None => 9,
                Some(next) if self.m.apply(next, first).is_some() => 3,
                Some(next) if self.strict => {
                    // Only if some required op that may go now needs it.
                    let needed = (0..required).any(|j| {
                        let y = open[j];
                        self.m.apply(next, y).is_some() && self.may_follow(i, state, next, y)
                    });
                    if needed {
                        5
                    } else {
                        9
                    }
                }
                Some(_) => 5,
            };
            scored.push((class, 0, i));
        }
        scored.sort_unstable();
        cands.extend(scored.iter().filter(|c| c.0 != 9).map(|c| c.2));
        self.scratch = scored;
        self.open_buf = open;
        Frame { state, min_ret, placed: 0, start, pos: start, end: cands.len() }
    }

    fn run(&mut self, opts: &CheckOptions, stats: &mut SearchStats, start: Instant) -> End {
        let n = self.n;
        let zobrist: Vec<u64> = (0..n as u64).map(|i| mix(i ^ 0x005e_ed0f_f107_111a)).collect();
        let mut bits = Bits::new(self.required, n - self.required);
        let mut hash = 0u64;
        let mut memo = Memo::new();
        memo.insert(mix(0), &bits, 0, 0);
        let mut remaining = self.required;
        let mut path: Vec<u32> = Vec::new();
        let mut max_depth = 0;
        let mut captured: Option<Deepest> = None;
        let mut cands: Vec<u32> = Vec::new();
        let mut group: Vec<u32> = Vec::new();
        let root = self.frame(0, None, &mut cands);
        let mut stack = vec![root];
        let mut iterations = 0u64;
        let finish = |stats: &mut SearchStats, memo: &Memo, max_depth: usize| {
            stats.states = memo.len() as u64;
            stats.max_depth = max_depth;
        };
        loop {
            if remaining == 0 {
                finish(stats, &memo, max_depth);
                return End::Linearizable;
            }
            iterations += 1;
            if iterations % 1024 == 0 {
                let over = if memo.len() as u64 > opts.max_states {
                    Some(format!("explored more than {} states", opts.max_states))
                } else if memo.bytes() > opts.max_memo_bytes {
                    Some(format!("memo over {} MiB", opts.max_memo_bytes >> 20))
                } else {
                    opts.timeout
                        .filter(|&t| start.elapsed() > t)
                        .map(|t| format!("search took over {:.1}s", t.as_secs_f64()))
                };
                if let Some(why) = over {
                    finish(stats, &memo, max_depth);
                    return End::Budget(
                        format!(
                            "search budget exhausted: {why} (deepest partial linearization {max_depth} \
                             of {n} ops)"
                        ),
                        captured,
                    );
                }
            }
            let f = stack.last_mut().expect("stack");
            let state = f.state;
            if f.pos == f.end {
                // Nothing left to try here: go back one op.
                if path.len() == max_depth && captured.as_ref().is_none_or(|c| c.path.len() < max_depth) {
                    let blocking = self.rnext[n];
                    captured = Some(Deepest {
                        path: path.clone(),
                        state,
                        blocking: ((blocking as usize) < n).then_some(blocking),
                        candidates: self.candidates(),
                    });
                }
                let f = stack.pop().expect("stack");
                cands.truncate(f.start);
                if f.placed == 0 {
                    finish(stats, &memo, max_depth);
                    return End::Violation(captured.expect("the root is captured"));
                }
                for last in path.drain(path.len() - f.placed..).rev() {
                    self.unlift(last);
                    let (w, b) = self.words(last);
                    bits.clear(w, b);
                    hash ^= zobrist[last as usize];
                    remaining += usize::from(self.is_required(last));
                }
                continue;
            }
            let op = cands[f.pos];
            f.pos += 1;
            let min_ret = f.min_ret;
            let Some(next) = self.m.apply(state, op) else { continue };
            // The op, after the dead writes that may go now if it is a write.
            group.clear();
            if self.m.write[op as usize] {
                self.dead_open(min_ret, op, &mut group);
            }
            group.push(op);
            for &g in &group {
                let (w, b) = self.words(g);
                bits.set(w, b);
                hash ^= zobrist[g as usize];
            }
            let after = (!self.is_required(op)).then_some((op, state));
            let tag = after.map_or(0, |(o, s)| (u64::from(o) + 1) << 32 | u64::from(s));
            if memo.insert(hash ^ mix(u64::from(next) ^ mix(tag)), &bits, next, tag) {
                for &g in &group {
                    self.lift(g);
                    remaining -= usize::from(self.is_required(g));
                    path.push(g);
                }
                max_depth = max_depth.max(path.len());
                let mut frame = self.frame(next, after, &mut cands);
                frame.placed = group.len();
                stack.push(frame);
            } else {
                stats.memo_hits += 1;
                for &g in &group {
                    let (w, b) = self.words(g);
                    bits.clear(w, b);
                    hash ^= zobrist[g as usize];
                }
            }
        }
    }
}

fn check_key(key: &[u8], history: &[Op], idx: &[usize], opts: &CheckOptions) -> KeyReport {
    let start = Instant::now();
    let mut report = KeyReport {
        key: key.to_vec(),
        ops: idx.len(),
        required: 0,
        optional: 0,
        dropped: 0,
        stats: SearchStats::default(),
        verdict: Verdict::Linearizable,
    };
    let problems: Vec<String> = idx
        .iter()
        .filter_map(|&g| model::validate(&history[g]).err().map(|e| format!("op #{g} ({}): {e}", history[g])))
        .collect();
    if !problems.is_empty() {
        report.verdict = Verdict::Malformed(problems);
        return report;
    }

    // Which ops take part: ok ops must be placed; unknown ones may be.
    let read_write_only = idx.iter().map(|&g| &history[g]).all(|o| {
        matches!(
            (&o.kind, &o.outcome),
            (_, Outcome::Failed)
                | (OpKind::Read, _)
                | (OpKind::Write(_), Outcome::Unknown | Outcome::Ok(OpResult::Done))
        )
    });
    let seen: HashSet<Option<&[u8]>> = idx
        .iter()
        .filter_map(|&g| match (&history[g].kind, &history[g].outcome) {
            (OpKind::Read, Outcome::Ok(OpResult::Value(v))) => Some(v.as_deref()),
            _ => None,
        })
        .collect();
    let mut local: Vec<(u64, u64, bool, usize)> = Vec::new(); // call, ret, required, global
    for &g in idx {
        let o = &history[g];
        let takes_part = match (&o.kind, &o.outcome) {
            (_, Outcome::Failed) => None,
            (OpKind::Read, Outcome::Unknown | Outcome::Ok(OpResult::Done)) => None,
            (OpKind::Write(v), Outcome::Unknown) if read_write_only && !seen.contains(&v.as_deref()) => None,
            (_, Outcome::Unknown) => Some(false),
            (_, Outcome::Ok(_)) => Some(true),
        };
        match takes_part {
            None => report.dropped += 1,
            Some(true) => {
                report.required += 1;
                local.push((o.call, o.ret.expect("validated"), true, g));
            }
            Some(false) => {
                report.optional += 1;
                local.push((o.call, u64::MAX, false, g));
            }
        }
    }
    if report.required == 0 {
        report.stats.elapsed = start.elapsed();
        return report;
    }
    // Required ops first, each part in call order.
    local.sort_by_key(|&(call, _, required, g)| (!required, call, g));
    let n = local.len();

    let mut machine = Machine {
        history,
        global: local.iter().map(|l| l.3).collect(),
        steps: Vec::with_capacity(n),
        pure: Vec::with_capacity(n),
        dead: Vec::with_capacity(n),
        blind: Vec::with_capacity(n),
        unread: Vec::with_capacity(n),
        write: Vec::with_capacity(n),
        values: vec![None],
        ids: HashMap::new(),
        computed: HashMap::new(),
    };
    for &(_, _, _, g) in &local {
        let o = &history[g];
        let result = match &o.outcome {
            Outcome::Ok(r) => Some(r),
            _ => None,
        };
        let step = match &o.kind {
            OpKind::Read => match result {
                Some(OpResult::Value(v)) => Step::Read(machine.intern(v.as_deref())),
                _ => unreachable!("unchecked reads are dropped"),
            },
            OpKind::Write(v) => Step::Put {
                to: machine.intern(v.as_deref()),
                existed: match result {
                    Some(OpResult::Int(c)) => Some(*c == 1),
                    _ => None,
                },
            },
            OpKind::SetNx(v) | OpKind::SetXx(v) => Step::PutIf {
                to: machine.intern(Some(v)),
                if_present: matches!(o.kind, OpKind::SetXx(_)),
                set: match result {
                    Some(OpResult::Flag(b)) => Some(*b),
                    _ => None,
                },
            },
            OpKind::Incr(_) | OpKind::Append(_) => Step::Compute,
        };
        machine.steps.push(step);
        machine.write.push(read_write_only && matches!(o.kind, OpKind::Write(_)));
        let blind = matches!((&o.kind, result), (OpKind::Write(_), None | Some(OpResult::Done)));
        machine.blind.push(blind);
        machine.unread.push(match &o.kind {
            OpKind::Write(v) => blind && result.is_some() && !seen.contains(&v.as_deref()),
            _ => false,
        });
        machine.dead.push(match &o.kind {
            OpKind::Write(v) => read_write_only && result.is_some() && !seen.contains(&v.as_deref()),
            _ => false,
        });
        machine.pure.push(matches!(
            (&o.kind, result),
            (OpKind::Read, _)
                | (OpKind::SetNx(_) | OpKind::SetXx(_), Some(OpResult::Flag(false)))
                | (OpKind::Write(None), Some(OpResult::Int(0)))
                | (OpKind::Incr(_), Some(OpResult::Error))
        ));
    }

    let mut search = Search {
        m: &mut machine,
        n,
        call: local.iter().map(|l| l.0).collect(),
        ret: local.iter().map(|l| l.1).collect(),
        required: report.required,
        cnext: vec![0; n + 2],
        cprev: vec![0; n + 2],
        rnext: vec![0; n + 1],
        rprev: vec![0; n + 1],
        scratch: Vec::new(),
        open_buf: Vec::new(),
        strict: report.optional > 0,
    };
    let (s, r) = (&mut search, report.required as u32);
    link(&mut s.cnext, &mut s.cprev, n as u32, 0..r);
    link(&mut s.cnext, &mut s.cprev, n as u32 + 1, r..n as u32);
    let mut by_ret: Vec<u32> = (0..r).collect();
    by_ret.sort_by_key(|&i| (local[i as usize].1, i));
    link(&mut s.rnext, &mut s.rprev, n as u32, by_ret.into_iter());

    let mut end = search.run(opts, &mut report.stats, start);
    if search.strict && matches!(end, End::Violation(_)) {
        // The strict pass found nothing: search everything (the search left the lists as it
        // found them).
        search.strict = false;
        let mut second = SearchStats::default();
        let left =
            CheckOptions { max_states: opts.max_states.saturating_sub(report.stats.states), ..opts.clone() };
        end = search.run(&left, &mut second, start);
        report.stats.states += second.states;
        report.stats.memo_hits += second.memo_hits;
        report.stats.max_depth = report.stats.max_depth.max(second.max_depth);
    }
    report.verdict = match end {
        End::Linearizable => Verdict::Linearizable,
        End::Budget(reason, d) => {
            Verdict::Unknown { reason, furthest: d.map(|d| Box::new(violation(&machine, history, d))) }
        }
        End::Violation(d) => Verdict::NotLinearizable(Box::new(violation(&machine, history, d))),
    };
    report.stats.elapsed = start.elapsed();
    report
}

fn violation(machine: &Machine<'_>, history: &[Op], d: Deepest) -> Violation {
    let g = |l: u32| machine.global[l as usize];
    let prefix: Vec<usize> = d.path.iter().map(|&l| g(l)).collect();
    let tail_from = prefix.len().saturating_sub(10);
    Violation {
        prefix_tail: prefix[tail_from..].iter().map(|&i| (i, history[i].clone())).collect(),
        prefix,
        state: machine.values[d.state as usize].clone(),
        blocking: d.blocking.map(|l| (g(l), history[g(l)].clone())),
        candidates: d
            .candidates
            .iter()
            .map(|&l| Candidate { index: g(l), op: history[g(l)].clone(), model: machine.output(d.state, l) })
            .collect(),
    }
}
