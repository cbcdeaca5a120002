//! Unit tests of the Raft core, each named after the rule it checks: Figure 2 of the Raft paper
//! (`rule_*`), then the thesis extensions — pre-vote, check-quorum, joint consensus, replication
//! flow control, leader transfer, snapshots, ReadIndex and leases — and finally bad input and
//! random schedules, as property tests.
//!
//! # The harness
//!
//! Two levels, cheapest first.
//!
//! - **One node, driven by hand.** `bootstrap` and `restored` build a `RawNode`; the test `step`s
//!   crafted messages into it; `flush` plays the host (`ready()` → `advance()` until idle) and
//!   returns every `Ready` the node handed out. Used where a rule is about one replica's answer.
//! - **A `Network`** of nodes (`BTreeMap<NodeId, Peer>`), each with an in-memory durable `Store`
//!   and an `App` (the commands it applied). `drain` plays the host for one node exactly as the
//!   contract in `node.rs` asks: persist the snapshot, the entries (truncating from the first) and
//!   the hard state; queue the messages; install the snapshot and apply the committed entries;
//!   `advance()`. `deliver` hands queued messages to their recipients in order, draining each
//!   after its step, until the network is quiet. Faults are explicit and deterministic: `isolate`
//!   loses everything to or from a node, `drop_if`/`drop_once` lose matching messages, `hold_if`
//!   delays them until `release` (or `deliver_held` lets some through). `deliver_until` and
//!   `deliver_first` move one message at a time when a test must look at an intermediate state;
//!   `restart` rebuilds a node from its store alone; `delivered` and `dropped` keep the traffic
//!   for counting.
//!
//! While it drains, the network checks what must hold in *every* scenario, so each test gets
//! these for free: a vote grant or an append acknowledgement never leaves a node before the state
//! it promises is in its store (Figure 2: persistent state is "updated on stable storage before
//! responding"); committed entries are applied in order and no two nodes apply different entries
//! at one index (State Machine Safety); at most one leader per term (Election Safety); a read
//! requested with `read` is confirmed at an index no lower than any commit index known when it
//! began (linearizability); honest messages are never refused as malformed; `check_invariants`
//! holds after every step.
//!
//! Time is `tick`; elections are started with `campaign_now`; every node's randomness is seeded
//! from its id, so every scenario replays exactly. The property tests draw their inputs from a
//! fixed seed (`property_config`); `PROPTEST_RNG_SEED` and `PROPTEST_CASES` explore further, and a
//! failure prints the minimal input, which replays exactly.
//!
//! Where a scenario exposes a defect of the core, a test that fails is kept and marked
//! `#[ignore = "BUG: …"]`, naming the defect, until the core is fixed; none is marked at present.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use super::{
    ConfChange, ConfChangeKind, Config, Entry, EntryPayload, HardState, InitialState, InvalidMessage,
    LogIndex, Membership, Message, MessageBody, NodeId, PlantedBug, RaftError, RawNode, ReadMode, ReadState,
    Ready, Role, Snapshot, SnapshotMeta, Term, LOG_INDEX_MAX,
};

// ================================================================ the harness: vocabulary

fn n(id: u64) -> NodeId {
    NodeId(id)
}

fn set(ids: &[u64]) -> BTreeSet<NodeId> {
    ids.iter().map(|&id| n(id)).collect()
}

/// A simple membership of the given voters.
fn voters(ids: &[u64]) -> Membership {
    Membership::with_voters(set(ids))
}

fn add_voter(id: u64) -> ConfChange {
    ConfChange::Change(vec![(n(id), ConfChangeKind::AddVoter)])
}

fn add_learner(id: u64) -> ConfChange {
    ConfChange::Change(vec![(n(id), ConfChangeKind::AddLearner)])
}

/// An application command; distinct for distinct `i`.
fn cmd(i: u64) -> Vec<u8> {
    format!("cmd {i}").into_bytes()
}

/// The entry a crafted log or append holds at `index` in `term` (a command naming both, so
/// that entries of different terms differ).
fn entry_at(index: u64, term: u64) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(term),
        payload: EntryPayload::Normal(format!("{index}@{term}").into_bytes()),
    }
}

/// The configuration the rest of this file calls "defaults": `Config::new` as it is, with
/// pre-vote and check-quorum.
fn defaults(_: &mut Config) {}

/// The configuration of Figure 2 alone: no pre-vote, no check-quorum (hence no stickiness).
fn plain(c: &mut Config) {
    c.pre_vote = false;
    c.check_quorum = false;
}

fn config(id: u64, tweak: impl Fn(&mut Config)) -> Config {
    let mut c = Config::new(n(id));
    tweak(&mut c);
    c
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { from: n(from), to: n(to), term: Term(term), body }
}

/// A RequestVote from `from` in `term` for a log ending at `(last_index, last_term)`.
fn vote_request(from: u64, to: u64, term: u64, (last_index, last_term): (u64, u64)) -> Message {
    let body =
        MessageBody::Vote { last_index: LogIndex(last_index), last_term: Term(last_term), transfer: false };
    msg(from, to, term, body)
}

fn vote_response(from: u64, to: u64, term: u64, granted: bool) -> Message {
    msg(from, to, term, MessageBody::VoteResponse { reject: !granted })
}

/// An AppendEntries after `(prev_index, prev_term)` carrying `entry_at(index, term)` for each
/// `(index, term)` of `entries`.
fn append(
    from: u64,
    to: u64,
    term: u64,
    (prev_index, prev_term): (u64, u64),
    entries: &[(u64, u64)],
    commit: u64,
) -> Message {
    let body = MessageBody::Append {
        prev_index: LogIndex(prev_index),
        prev_term: Term(prev_term),
        entries: entries.iter().map(|&(index, term)| entry_at(index, term)).collect(),
        commit: LogIndex(commit),
    };
    msg(from, to, term, body)
}

/// A follower's acknowledgement that its log matches the leader's up to `index`.
fn append_ack(from: u64, to: u64, term: u64, index: u64) -> Message {
    let index = LogIndex(index);
    msg(
        from,
        to,
        term,
        MessageBody::AppendResponse { reject: false, index, hint_index: index, hint_term: None },
    )
}

fn is_append_with_entries(m: &Message) -> bool {
    matches!(&m.body, MessageBody::Append { entries, .. } if !entries.is_empty())
}

/// The answer to a RequestVote among `messages`, sent to `to`: `Some(true)` for a grant.
fn vote_answer(messages: &[Message], to: u64) -> Option<bool> {
    messages.iter().find_map(|m| match m.body {
        MessageBody::VoteResponse { reject } if m.to == n(to) => Some(!reject),
        _ => None,
    })
}

/// The entries of the in-memory log (after the snapshot).
fn log_of(r: &RawNode) -> Vec<Entry> {
    (r.snapshot_index().next().0..=r.last_index().0).filter_map(|i| r.entry(LogIndex(i)).cloned()).collect()
}

/// The terms of the in-memory log, from its first entry.
fn log_terms(r: &RawNode) -> Vec<u64> {
    log_of(r).iter().map(|e| e.term.0).collect()
}

// ================================================================ the harness: one node by hand

/// A member of a brand-new group with membership `m`, its randomness seeded from its id.
fn bootstrap(id: u64, m: &Membership, tweak: impl Fn(&mut Config)) -> RawNode {
    RawNode::new(config(id, tweak), InitialState::bootstrap(m.clone()), id).expect("bootstrap")
}

/// Durable state after a restart: the bootstrap entry (1@1 with membership `m`), then one entry
/// per element of `terms` (indexes 2, 3, …), hard state `term` (no vote) and `commit`.
fn restored_state(m: &Membership, terms: &[u64], term: u64, commit: u64) -> InitialState {
    let mut state = InitialState::bootstrap(m.clone());
    state.entries.extend(terms.iter().enumerate().map(|(k, &t)| entry_at(k as u64 + 2, t)));
    state.hard_state = HardState { term: Term(term), vote: None, commit: LogIndex(commit) };
    state
}

/// A node restarted from `restored_state(m, terms, term, commit)`.
fn restored(
    id: u64,
    m: &Membership,
    terms: &[u64],
    term: u64,
    commit: u64,
    tweak: impl Fn(&mut Config),
) -> RawNode {
    RawNode::new(config(id, tweak), restored_state(m, terms, term, commit), id).expect("restore")
}

/// A bootstrapped node that has won term 2: every voter of `m` granted its (pre-)votes.
fn leader(id: u64, m: &Membership, tweak: impl Fn(&mut Config)) -> RawNode {
    let mut r = bootstrap(id, m, tweak);
    r.campaign_now();
    for _ in 0..3 {
        for request in flush(&mut r).messages() {
            let (from, term) = (request.to.0, request.term.0);
            let answer = match request.body {
                MessageBody::PreVote { .. } => {
                    msg(from, id, term, MessageBody::PreVoteResponse { reject: false })
                }
                MessageBody::Vote { .. } => vote_response(from, id, term, true),
                _ => continue,
            };
            r.step(answer).expect("a vote answer");
        }
    }
    flush(&mut r);
    assert_eq!(r.role(), Role::Leader, "n{id} was not elected: {:?}", r.status());
    r
}

/// Every `Ready` a node handed out during one `flush`.
#[derive(Debug)]
struct Readies(Vec<Ready>);

impl Readies {
    fn messages(&self) -> Vec<Message> {
        self.0.iter().flat_map(|rd| rd.messages.iter().cloned()).collect()
    }

    /// The entries handed out for persisting, in order.
    fn entries(&self) -> Vec<Entry> {
        self.0.iter().flat_map(|rd| rd.entries.iter().cloned()).collect()
    }

    /// The last hard state handed out, if any changed.
    fn hard_state(&self) -> Option<HardState> {
        self.0.iter().rev().find_map(|rd| rd.hard_state)
    }
}

/// Plays the host for one node: `ready()` → `advance()` until the node has no more work.
fn flush(r: &mut RawNode) -> Readies {
    let mut readies = Vec::new();
    while r.has_ready() {
        assert!(readies.len() < 100, "n{} keeps producing work", r.id());
        readies.push(r.ready());
        r.advance();
        r.check_invariants();
    }
    Readies(readies)
}

// ================================================================ the harness: a network

/// A node's durable storage: what survives `restart`.
#[derive(Debug, Default)]
struct Store {
    hard_state: HardState,
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

impl Store {
    fn last_index(&self) -> LogIndex {
        match (self.entries.last(), &self.snapshot) {
            (Some(e), _) => e.index,
            (None, Some(s)) => s.meta.index,
            (None, None) => LogIndex::ZERO,
        }
    }
}

/// The state machine: the commands applied, in order. Volatile: rebuilt from the snapshot on
/// restart.
#[derive(Debug, Default)]
struct App {
    applied: LogIndex,
    commands: Vec<Vec<u8>>,
}

impl App {
    fn apply(&mut self, id: NodeId, entry: &Entry) {
        assert_eq!(
            entry.index,
            self.applied.next(),
            "{id} applied entry {} after {}: committed entries must be applied in order",
            entry.index,
            self.applied
        );
        if let EntryPayload::Normal(command) = &entry.payload {
            self.commands.push(command.clone());
        }
        self.applied = entry.index;
    }

    /// Snapshot data: each command, length-prefixed.
    fn encode(&self) -> Vec<u8> {
        let mut data = Vec::new();
        for command in &self.commands {
            data.extend_from_slice(&(command.len() as u32).to_le_bytes());
            data.extend_from_slice(command);
        }
        data
    }

    fn restore(snapshot: Option<&Snapshot>) -> App {
        let Some(snapshot) = snapshot else { return App::default() };
        let mut commands = Vec::new();
        let mut rest = &snapshot.data[..];
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let len = u32::from_le_bytes(*len) as usize;
            assert!(tail.len() >= len, "corrupt snapshot data at {}", snapshot.meta.index);
            commands.push(tail[..len].to_vec());
            rest = &tail[len..];
        }
        App { applied: snapshot.meta.index, commands }
    }
}

/// One node of a `Network`: the replica, its durable store, its state machine, and what the
/// host saw of it.
#[derive(Debug)]
struct Peer {
    raft: RawNode,
    cfg: Config,
    store: Store,
    app: App,
    /// Snapshots installed from the leader, in order.
    installed: Vec<SnapshotMeta>,
    /// Confirmed reads, in order.
    read_states: Vec<ReadState>,
    /// Reads in flight (`ctx` → the highest commit index anywhere when the read began).
    reads: BTreeMap<u64, LogIndex>,
    /// `PlantedBug::ForgetHardState` only: the hard state not yet written.
    unsynced_hard_state: Option<HardState>,
}

impl Peer {
    fn new(cfg: Config, initial: InitialState) -> Peer {
        let store = Store {
            hard_state: initial.hard_state,
            snapshot: initial.snapshot.clone(),
            entries: initial.entries.clone(),
        };
        let app = App::restore(store.snapshot.as_ref());
        let raft = RawNode::new(cfg.clone(), initial, cfg.id.0).expect("a valid initial state");
        Peer {
            raft,
            cfg,
            store,
            app,
            installed: Vec::new(),
            read_states: Vec::new(),
            reads: BTreeMap::new(),
            unsynced_hard_state: None,
        }
    }
}

/// A fault rule: which messages it applies to.
type Rule = Box<dyn Fn(&Message) -> bool>;

/// Nodes connected by a lossless, in-order network whose faults the test sets explicitly.
/// See the module docs.
struct Network {
    peers: BTreeMap<NodeId, Peer>,
    /// Messages sent and not yet delivered, oldest first.
    queue: VecDeque<Message>,
    /// Every message stepped into its recipient, in order.
    delivered: Vec<Message>,
    /// Every message lost to a fault (or addressed to no node), in order.
    dropped: Vec<Message>,
    /// Messages delayed by `hold_if`, until `release` or `deliver_held`.
    held: Vec<Message>,
    isolated: BTreeSet<NodeId>,
    drop_rules: Vec<Rule>,
    drop_once_rules: Vec<Rule>,
    hold_rules: Vec<Rule>,
    /// Election Safety: the leader seen in each term.
    leaders: BTreeMap<Term, NodeId>,
    /// State Machine Safety: the entry applied at each index, and who applied it first.
    applied: BTreeMap<LogIndex, (NodeId, Entry)>,
}

impl Network {
    /// Voters `ids`, default configuration.
    fn new(ids: &[u64]) -> Network {
        Network::with_config(ids, defaults)
    }

    /// Voters `ids`, each configuration changed by `tweak`.
    fn with_config(ids: &[u64], tweak: impl Fn(&mut Config)) -> Network {
        Network::with_membership(&voters(ids), tweak)
    }

    /// Every member of `m` (voters and learners), bootstrapped with it.
    fn with_membership(m: &Membership, tweak: impl Fn(&mut Config)) -> Network {
        let mut net = Network {
            peers: BTreeMap::new(),
            queue: VecDeque::new(),
            delivered: Vec::new(),
            dropped: Vec::new(),
            held: Vec::new(),
            isolated: BTreeSet::new(),
            drop_rules: Vec::new(),
            drop_once_rules: Vec::new(),
            hold_rules: Vec::new(),
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
        };
        for id in m.members() {
            net.add(Peer::new(config(id.0, &tweak), InitialState::bootstrap(m.clone())));
        }
        net
    }

    /// A node outside the membership, with empty storage, for a membership change to add.
    fn add_joiner(&mut self, id: u64, tweak: impl Fn(&mut Config)) {
        assert!(!self.peers.contains_key(&n(id)), "n{id} already exists");
        self.add(Peer::new(config(id, tweak), InitialState::default()));
    }

    fn add(&mut self, peer: Peer) {
        let id = peer.cfg.id;
        self.peers.insert(id, peer);
        self.drain(id);
    }

    fn peer(&self, id: u64) -> &Peer {
        self.peers.get(&n(id)).unwrap_or_else(|| panic!("no node n{id}"))
    }

    fn raft(&self, id: u64) -> &RawNode {
        &self.peer(id).raft
    }

    /// The commands node `id` has applied, in order.
    fn commands(&self, id: u64) -> Vec<Vec<u8>> {
        self.peer(id).app.commands.clone()
    }

    /// Does `f` to node `id` as its host would (a proposal, a tick, a crafted message…), then
    /// drains it. Returns what `f` returned.
    fn act<T>(&mut self, id: u64, f: impl FnOnce(&mut RawNode) -> T) -> T {
        let peer = self.peers.get_mut(&n(id)).unwrap_or_else(|| panic!("no node n{id}"));
        let out = f(&mut peer.raft);
        peer.raft.check_invariants();
        self.drain(n(id));
        out
    }

    fn tick(&mut self, id: u64, ticks: usize) {
        for _ in 0..ticks {
            self.act(id, RawNode::tick);
        }
    }

    /// Ticks the leader `id` until it heartbeats, and delivers: followers learn its commit
    /// index (a commit alone sends nothing).
    fn heartbeat(&mut self, id: u64) {
        let ticks = self.peer(id).cfg.heartbeat_ticks as usize;
        self.tick(id, ticks);
        self.deliver();
    }

    /// `rounds` times: every node ticks once, then the network delivers until quiet.
    fn tick_all(&mut self, rounds: usize) {
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for _ in 0..rounds {
            for id in &ids {
                self.act(id.0, RawNode::tick);
            }
            self.deliver();
        }
    }

    /// Makes `id` campaign and delivers until quiet; it must have won.
    fn elect(&mut self, id: u64) {
        self.act(id, RawNode::campaign_now);
        self.deliver();
        let r = self.raft(id);
        assert_eq!(r.role(), Role::Leader, "n{id} was not elected: {:?}", r.status());
    }

    fn propose(&mut self, id: u64, command: Vec<u8>) -> LogIndex {
        self.act(id, |r| r.propose(command)).unwrap_or_else(|e| panic!("n{id} refused a proposal: {e}"))
    }

    /// Proposes all of `commands` before draining once, so that they can travel together.
    fn propose_batch(&mut self, id: u64, commands: impl IntoIterator<Item = Vec<u8>>) {
        self.act(id, |r| {
            for command in commands {
                r.propose(command).unwrap_or_else(|e| panic!("n{id} refused a proposal: {e}"));
            }
        });
    }

    fn conf_change(&mut self, id: u64, change: ConfChange) -> Result<LogIndex, RaftError> {
        self.act(id, |r| r.propose_conf_change(change))
    }

    /// Requests a read at node `id`; when it is confirmed, the network checks it against every
    /// commit index known now.
    fn read(&mut self, id: u64, ctx: u64, mode: ReadMode) -> Result<(), RaftError> {
        let known = self.peers.values().map(|p| p.raft.commit_index()).max().unwrap_or_default();
        self.peers.get_mut(&n(id)).expect("node").reads.insert(ctx, known);
        let result = self.act(id, |r| r.read_index(ctx, mode));
        if result.is_err() {
            self.peers.get_mut(&n(id)).expect("node").reads.remove(&ctx);
        }
        result
    }

    /// Snapshots node `id`'s state machine at its applied index, compacts its log, and stores
    /// the snapshot.
    fn compact(&mut self, id: u64) -> SnapshotMeta {
        let peer = self.peers.get_mut(&n(id)).expect("node");
        let data = peer.app.encode();
        let meta = peer
            .raft
            .compact(peer.app.applied, data.clone())
            .unwrap_or_else(|e| panic!("n{id} cannot compact: {e}"));
        peer.raft.check_invariants();
        peer.store.entries.retain(|e| e.index > meta.index);
        peer.store.snapshot = Some(Snapshot { meta: meta.clone(), data });
        meta
    }

    /// Crashes node `id` and rebuilds it from its store alone: everything volatile (role,
    /// leader, progress, pending reads, the state machine) is lost.
    fn restart(&mut self, id: u64) {
        let peer = self.peers.get_mut(&n(id)).expect("node");
        let app = App::restore(peer.store.snapshot.as_ref());
        let initial = InitialState {
            hard_state: peer.store.hard_state,
            snapshot: peer.store.snapshot.clone(),
            entries: peer.store.entries.clone(),
            applied: app.applied,
        };
        peer.raft = RawNode::new(peer.cfg.clone(), initial, id)
            .unwrap_or_else(|e| panic!("n{id} cannot restart from its store: {e}"));
        peer.app = app;
        peer.reads.clear();
        peer.unsynced_hard_state = None;
        self.drain(n(id));
    }

    // ------------------------------------------------------------ faults

    /// Loses every message to or from `id` (checked on delivery) until `heal`.
    fn isolate(&mut self, id: u64) {
        self.isolated.insert(n(id));
    }

    /// Ends every isolation and every `drop_if`/`drop_once` rule (held messages stay held).
    fn heal(&mut self) {
        self.isolated.clear();
        self.drop_rules.clear();
        self.drop_once_rules.clear();
    }

    /// Loses every message matching `rule` until `heal`.
    fn drop_if(&mut self, rule: impl Fn(&Message) -> bool + 'static) {
        self.drop_rules.push(Box::new(rule));
    }

    /// Loses the next message matching `rule`.
    fn drop_once(&mut self, rule: impl Fn(&Message) -> bool + 'static) {
        self.drop_once_rules.push(Box::new(rule));
    }

    /// Delays every message matching `rule` until `release`.
    fn hold_if(&mut self, rule: impl Fn(&Message) -> bool + 'static) {
        self.hold_rules.push(Box::new(rule));
    }

    /// Ends every hold; the held messages join the queue, in the order they were held.
    fn release(&mut self) {
        self.hold_rules.clear();
        self.queue.extend(self.held.drain(..));
    }

    /// Delivers the held messages that match `which` now (the holds stay).
    fn deliver_held(&mut self, which: impl Fn(&Message) -> bool) {
        let (chosen, kept): (Vec<Message>, Vec<Message>) = self.held.drain(..).partition(|m| which(m));
        self.held = kept;
        for m in chosen {
            self.step_into(m);
        }
    }

    // ------------------------------------------------------------ delivery

    /// How many queued messages match `which`.
    fn queued(&self, which: impl Fn(&Message) -> bool) -> usize {
        self.queue.iter().filter(|m| which(m)).count()
    }

    /// How many messages delivered since `mark` (a length of `delivered`) match `which`.
    fn delivered_since(&self, mark: usize, which: impl Fn(&Message) -> bool) -> usize {
        self.delivered[mark..].iter().filter(|m| which(m)).count()
    }

    /// Delivers queued messages in order, and those they cause, until the network is quiet.
    fn deliver(&mut self) {
        let mut budget = 1_000_000;
        while let Some(m) = self.queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "the network never went quiet");
            self.route(m);
        }
    }

    /// Delivers queued messages one at a time, in order, up to and including the first that
    /// matches `until`.
    fn deliver_until(&mut self, until: impl Fn(&Message) -> bool) {
        while let Some(m) = self.queue.pop_front() {
            let last = until(&m);
            self.route(m);
            if last {
                return;
            }
        }
        panic!("the network went quiet before a matching message was delivered");
    }

    /// Delivers only the first queued message that matches `which`.
    fn deliver_first(&mut self, which: impl Fn(&Message) -> bool) {
        let at = self.queue.iter().position(which).expect("no queued message matches");
        let m = self.queue.remove(at).expect("queued");
        self.route(m);
    }

    /// One message through the faults, then into its recipient.
    fn route(&mut self, m: Message) {
        if self.isolated.contains(&m.from) || self.isolated.contains(&m.to) || !self.peers.contains_key(&m.to)
        {
            self.dropped.push(m);
            return;
        }
        if let Some(at) = self.drop_once_rules.iter().position(|rule| rule(&m)) {
            drop(self.drop_once_rules.remove(at));
            self.dropped.push(m);
            return;
        }
        if self.drop_rules.iter().any(|rule| rule(&m)) {
            self.dropped.push(m);
            return;
        }
        if self.hold_rules.iter().any(|rule| rule(&m)) {
            self.held.push(m);
            return;
        }
        self.step_into(m);
    }

    /// Steps `m` into its recipient, which must accept it (every message here was sent by an
    /// honest node), and drains the recipient.
    fn step_into(&mut self, m: Message) {
        let to = m.to;
        self.delivered.push(m.clone());
        let peer = self.peers.get_mut(&to).expect("recipient");
        if let Err(e) = peer.raft.step(m.clone()) {
            panic!("{to} refused an honest message as malformed ({e}): {m:?}");
        }
        peer.raft.check_invariants();
        self.drain(to);
    }

    /// Plays the host for node `id` until it has no more work, exactly as `node.rs` asks:
    /// persist (snapshot, entries, hard state), send, apply, advance. Checks, on the way, that
    /// no message promises state that is not durable yet, that entries are applied in order
    /// and identically everywhere, that reads are linearizable, and Election Safety.
    fn drain(&mut self, id: NodeId) {
        let Network { peers, queue, leaders, applied, .. } = self;
        let peer = peers.get_mut(&id).expect("node");
        let forget_hard_state = peer.cfg.planted_bug == Some(PlantedBug::ForgetHardState);
        let mut rounds = 0;
        while peer.raft.has_ready() {
            rounds += 1;
            assert!(rounds < 1000, "{id} keeps producing work");
            let rd = peer.raft.ready();

            // Persist.
            let store = &mut peer.store;
            if let Some(snapshot) = &rd.snapshot {
                store.snapshot = Some(snapshot.clone());
                store.entries.clear();
            }
            if let Some(first) = rd.entries.first() {
                store.entries.retain(|e| e.index < first.index);
                store.entries.extend(rd.entries.iter().cloned());
            }
            if forget_hard_state {
                // The planted bug: the hard state is written one `Ready` late.
                if let Some(hard_state) = peer.unsynced_hard_state.take() {
                    store.hard_state = hard_state;
                }
                peer.unsynced_hard_state = rd.hard_state;
            } else if let Some(hard_state) = rd.hard_state {
                store.hard_state = hard_state;
            }

            // Send — only what the store backs.
            for m in &rd.messages {
                check_promise(store, m);
            }
            queue.extend(rd.messages);

            // Apply.
            if let Some(snapshot) = &rd.snapshot {
                let meta = &snapshot.meta;
                if let Some((other, entry)) = applied.get(&meta.index) {
                    assert_eq!(
                        entry.term, meta.term,
                        "State Machine Safety: {id} installed a snapshot at {}@{}, {other} applied {entry:?}",
                        meta.index, meta.term
                    );
                }
                peer.app = App::restore(Some(snapshot));
                peer.installed.push(meta.clone());
            }
            for entry in &rd.committed_entries {
                peer.app.apply(id, entry);
                match applied.get(&entry.index) {
                    Some((other, first)) => assert_eq!(
                        first, entry,
                        "State Machine Safety: {id} applied {entry:?}, {other} applied {first:?} at that index"
                    ),
                    None => {
                        applied.insert(entry.index, (id, entry.clone()));
                    }
                }
            }
            for rs in rd.read_states {
                if let Some(known) = peer.reads.remove(&rs.ctx) {
                    assert!(
                        rs.index >= known,
                        "linearizability: {id} confirmed read {} at {}, but {known} was committed before it began",
                        rs.ctx,
                        rs.index
                    );
                }
                peer.read_states.push(rs);
            }
            peer.raft.advance();
        }
        peer.raft.check_invariants();
        if peer.raft.role() == Role::Leader {
            let term = peer.raft.term();
            if let Some(other) = leaders.insert(term, id) {
                assert_eq!(other, id, "Election Safety: {other} and {id} both lead {term}");
            }
        }
    }
}

/// A message may leave its sender only once the state it vouches for is in the sender's store:
/// its term (except for pre-votes, which name a future term), the vote a grant gives, the
/// entries an acknowledgement claims.
fn check_promise(store: &Store, m: &Message) {
    let durable = store.hard_state;
    let (from, kind) = (m.from, m.body.kind());
    match m.body {
        MessageBody::VoteResponse { reject: false } => assert!(
            durable.term == m.term && durable.vote == Some(m.to),
            "{from} granted its vote in {} to {} before persisting its vote (durable: {durable:?})",
            m.term,
            m.to
        ),
        MessageBody::AppendResponse { reject: false, index, .. } => assert!(
            index <= store.last_index(),
            "{from} acknowledged entries up to {index} before persisting them (durable up to {})",
            store.last_index()
        ),
        _ => {}
    }
    match m.body {
        MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { reject: false } => {}
        _ => assert!(
            durable.term >= m.term,
            "{from} sent {kind} in {} before persisting its term (durable: {durable:?})",
            m.term
        ),
    }
}

// ================================================================ Figure 2: AppendEntries

/// AppendEntries rule 1 (and RequestVote rule 1): reply false if term < currentTerm. A stale
/// leader's append is refused in the receiver's term, so that the stale leader learns of it,
/// and changes nothing; a stale candidate gets no vote.
#[test]
fn rule_reply_false_if_term_lt_current_term() {
    // n1 holds 1@1, 2@2, 3@3 and is in term 3.
    let mut r = restored(1, &voters(&[1, 2, 3]), &[2, 3], 3, 2, defaults);
    flush(&mut r);
    let log = log_of(&r);

    // A leader of term 2 would overwrite entry 3 and commit it.
    r.step(append(2, 1, 2, (2, 2), &[(3, 2), (4, 2)], 3)).unwrap();
    let messages = flush(&mut r).messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(matches!(messages[0].body, MessageBody::AppendResponse { reject: true, .. }), "{messages:?}");
    assert_eq!((messages[0].to, messages[0].term), (n(2), Term(3)), "refused in the receiver's term");
    assert_eq!(log_of(&r), log, "a stale append changed the log");
    assert_eq!((r.term(), r.commit_index(), r.leader()), (Term(3), LogIndex(2), None));

    // A candidate of term 2 with a longer log.
    r.step(vote_request(3, 1, 2, (9, 2))).unwrap();
    let messages = flush(&mut r).messages();
    assert_ne!(vote_answer(&messages, 3), Some(true), "voted for a candidate of an older term");
    assert_eq!((r.term(), r.status().vote), (Term(3), None));
}

/// AppendEntries rule 2: reply false if the log does not contain an entry at prevLogIndex whose
/// term matches prevLogTerm — whether the index is missing or holds another term — and append
/// nothing; the rejection's hints tell the leader where to retry. Once prev matches, the append
/// is accepted.
#[test]
fn rule_reply_false_if_log_lacks_prev_entry() {
    let m = voters(&[1, 2, 3]);
    // n1 holds 1@1, 2@2, 3@2, committed up to 1.
    let cases = [
        // (prev, the rejection's hint_index and hint_term)
        ((4, 2), (4, None)),
        ((3, 3), (2, Some(Term(2)))),
    ];
    for ((prev_index, prev_term), (hint_index, hint_term)) in cases {
        let mut r = restored(1, &m, &[2, 2], 2, 1, plain);
        flush(&mut r);
        r.step(append(2, 1, 3, (prev_index, prev_term), &[(prev_index + 1, 3)], 3)).unwrap();
        let readies = flush(&mut r);
        let refusal = MessageBody::AppendResponse {
            reject: true,
            index: LogIndex(prev_index),
            hint_index: LogIndex(hint_index),
            hint_term,
        };
        assert_eq!(readies.messages(), vec![msg(1, 2, 3, refusal)], "prev {prev_index}@{prev_term}");
        assert!(readies.entries().is_empty(), "appended after a missing prev {prev_index}@{prev_term}");
        assert_eq!(log_terms(&r), [1, 2, 2]);
        assert_eq!(r.commit_index(), LogIndex(1));
    }

    let mut r = restored(1, &m, &[2, 2], 2, 1, plain);
    flush(&mut r);
    r.step(append(2, 1, 3, (3, 2), &[(4, 3)], 3)).unwrap();
    assert_eq!(flush(&mut r).messages(), vec![append_ack(1, 2, 3, 4)]);
    assert_eq!(log_terms(&r), [1, 2, 2, 3]);
}

/// The same check has teeth: with the planted `SkipLogCheck` bug the follower accepts an append
/// whose prev entry has another term.
#[test]
fn rule_reply_false_if_log_lacks_prev_entry_catches_planted_skip_log_check() {
    let mut r =
        restored(1, &voters(&[1, 2, 3]), &[2, 2], 2, 1, |c| c.planted_bug = Some(PlantedBug::SkipLogCheck));
    flush(&mut r);
    r.step(append(2, 1, 3, (3, 3), &[(4, 3)], 3)).unwrap();
    assert_eq!(flush(&mut r).messages(), vec![append_ack(1, 2, 3, 4)]);
    assert_eq!(log_terms(&r), [1, 2, 2, 3]);
}

/// AppendEntries rule 3: if an existing entry conflicts with a new one (same index, different
/// terms), delete it and all that follow. The host learns of it from `Ready::entries`, which
/// start at the conflict, so its durable log is truncated there too.
#[test]
fn rule_conflicting_entry_is_deleted_with_all_that_follow() {
    // n1 holds 1@1 and 2@2 … 5@2; the leader of term 3 has 3@2, 4@3.
    let mut r = restored(1, &voters(&[1, 2, 3]), &[2, 2, 2, 2], 2, 1, plain);
    flush(&mut r);
    r.step(append(3, 1, 3, (2, 2), &[(3, 2), (4, 3)], 1)).unwrap();
    let readies = flush(&mut r);
    assert_eq!(log_terms(&r), [1, 2, 2, 3], "entries from the conflict on must go, 5@2 included");
    assert_eq!(readies.entries(), vec![entry_at(4, 3)], "the host must truncate from the conflict");
    assert_eq!(readies.messages(), vec![append_ack(1, 3, 3, 4)]);

    // In a network the durable log follows: n2 led term 2 alone and appended entries that n1,
    // the leader of term 3, replaces.
    let mut net = Network::with_config(&[1, 2, 3], plain);
    net.elect(2);
    net.isolate(2);
    net.propose_batch(2, (0..3).map(cmd));
    net.deliver();
    net.elect(1);
    net.heal();
    net.tick(1, net.peer(1).cfg.heartbeat_ticks as usize);
    net.deliver();
    assert_eq!(log_of(net.raft(2)), log_of(net.raft(1)));
    assert_eq!(net.peer(2).store.entries, log_of(net.raft(1)), "n2's durable log kept conflicting entries");
}

/// AppendEntries rule 4: append any new entries not already in the log. Entries already held are
/// not handed to the host again, and an append that covers only a prefix of the log (a stale or
/// reordered one) truncates nothing.
#[test]
fn rule_append_new_entries_not_in_log() {
    // n1 holds 1@1, 2@2, 3@2, 4@2.
    let mut r = restored(1, &voters(&[1, 2, 3]), &[2, 2, 2], 2, 1, plain);
    flush(&mut r);
    r.step(append(2, 1, 2, (1, 1), &[(2, 2), (3, 2)], 1)).unwrap();
    let readies = flush(&mut r);
    assert!(readies.entries().is_empty(), "rewrote entries it already held");
    assert_eq!(log_terms(&r), [1, 2, 2, 2], "an append of a prefix truncated the log");
    assert_eq!(readies.messages(), vec![append_ack(1, 2, 2, 3)]);

    r.step(append(2, 1, 2, (3, 2), &[(4, 2), (5, 2), (6, 2)], 1)).unwrap();
    let readies = flush(&mut r);
    assert_eq!(readies.entries(), vec![entry_at(5, 2), entry_at(6, 2)], "only the new entries");
    assert_eq!(log_terms(&r), [1, 2, 2, 2, 2, 2]);
    assert_eq!(readies.messages(), vec![append_ack(1, 2, 2, 6)]);
}

/// AppendEntries rule 5: if leaderCommit > commitIndex, set commitIndex = min(leaderCommit,
/// index of last new entry). Entries beyond the last new one may differ from the leader's, so
/// they are not committed however high the leader's commit index; nor does the commit index
/// ever move back.
#[test]
fn rule_follower_commit_is_min_of_leader_commit_and_last_new_entry() {
    // n1 holds 1@1 and 2@2 … 5@2; the leader of term 3 agrees only up to 2.
    let mut r = restored(1, &voters(&[1, 2, 3]), &[2, 2, 2, 2], 2, 1, plain);
    flush(&mut r);
    r.step(append(2, 1, 3, (1, 1), &[(2, 2)], 5)).unwrap();
    flush(&mut r);
    assert_eq!(r.commit_index(), LogIndex(2), "committed entries beyond the last new one");

    r.step(append(2, 1, 3, (2, 2), &[(3, 3), (4, 3)], 3)).unwrap();
    flush(&mut r);
    assert_eq!(r.commit_index(), LogIndex(3), "the leader's commit index, below the last new entry");

    // A reordered, older append.
    r.step(append(2, 1, 3, (2, 2), &[(3, 3)], 2)).unwrap();
    flush(&mut r);
    assert_eq!(r.commit_index(), LogIndex(3), "the commit index moved back");
    assert_eq!(log_terms(&r), [1, 2, 3, 3]);
}

// ================================================================ Figure 2: RequestVote

/// Node 1 of {1,2,3} is asked for its vote in term 2 by n2, n3, then n2 again; its answers.
fn votes_in_one_term(bug: Option<PlantedBug>) -> Vec<Option<bool>> {
    let mut r = bootstrap(1, &voters(&[1, 2, 3]), move |c| {
        plain(c);
        c.planted_bug = bug;
    });
    flush(&mut r);
    [2, 3, 2]
        .into_iter()
        .map(|candidate| {
            r.step(vote_request(candidate, 1, 2, (1, 1))).unwrap();
            vote_answer(&flush(&mut r).messages(), candidate)
        })
        .collect()
}

/// RequestVote rule 2, first half: a node votes for at most one candidate in a term. It grants
/// the same candidate again (a retransmitted request) and refuses every other.
#[test]
fn rule_vote_granted_at_most_once_per_term() {
    assert_eq!(votes_in_one_term(None), [Some(true), Some(false), Some(true)]);
}

/// The same scenario has teeth: with the planted `VoteTwice` bug the node votes for both.
#[test]
fn rule_vote_granted_at_most_once_per_term_catches_planted_vote_twice() {
    assert_eq!(votes_in_one_term(Some(PlantedBug::VoteTwice)), [Some(true), Some(true), Some(true)]);
}

/// RequestVote rule 2, second half (§5.4.1): vote only for a candidate whose log is at least as
/// up to date: a later last term wins whatever the lengths; with equal last terms, the longer
/// log wins, and equal logs are up to date.
#[test]
fn rule_vote_only_for_up_to_date_log() {
    // The voter holds 1@1, 2@2, 3@2.
    let cases = [
        // (the candidate's last index and last term, granted)
        ((9, 1), false),
        ((2, 2), false),
        ((3, 2), true),
        ((4, 2), true),
        ((2, 3), true),
    ];
    for ((last_index, last_term), granted) in cases {
        let mut r = restored(1, &voters(&[1, 2, 3]), &[2, 2], 2, 1, plain);
        flush(&mut r);
        r.step(vote_request(2, 1, 3, (last_index, last_term))).unwrap();
        let answer = vote_answer(&flush(&mut r).messages(), 2);
        assert_eq!(answer, Some(granted), "candidate's log ends at {last_index}@{last_term}");
        assert_eq!((r.term(), r.status().vote), (Term(3), granted.then_some(n(2))));
    }
}

/// The vote a grant promises is in the same `Ready` as the grant, so a host that follows the
/// contract persists it first (Figure 2: persistent state is "updated on stable storage before
/// responding to RPCs"). Likewise a candidate's new term and self-vote come with its vote
/// requests, and appended entries with their acknowledgement.
#[test]
fn rule_hard_state_in_ready_before_vote_response() {
    let m = voters(&[1, 2, 3]);
    let mut r = bootstrap(1, &m, plain);
    flush(&mut r);
    r.step(vote_request(2, 1, 2, (1, 1))).unwrap();
    let readies = flush(&mut r);
    let grant = readies.0.iter().position(|rd| vote_answer(&rd.messages, 2) == Some(true));
    let vote = readies.0.iter().position(|rd| rd.hard_state.is_some_and(|hs| hs.vote == Some(n(2))));
    assert!(grant.is_some(), "no grant: {readies:?}");
    assert!(
        vote.is_some_and(|v| Some(v) <= grant),
        "the grant left before the vote was handed out: {readies:?}"
    );
    assert_eq!(
        readies.hard_state(),
        Some(HardState { term: Term(2), vote: Some(n(2)), commit: LogIndex(1) })
    );

    let mut c = bootstrap(3, &m, plain);
    c.campaign_now();
    let readies = flush(&mut c);
    let first = &readies.0[0];
    assert_eq!(first.hard_state, Some(HardState { term: Term(2), vote: Some(n(3)), commit: LogIndex(1) }));
    assert_eq!(first.messages.iter().filter(|m| matches!(m.body, MessageBody::Vote { .. })).count(), 2);

    r.step(append(2, 1, 2, (1, 1), &[(2, 2)], 1)).unwrap();
    let readies = flush(&mut r);
    let ack = readies.0.iter().position(|rd| rd.messages.contains(&append_ack(1, 2, 2, 2)));
    let entry = readies.0.iter().position(|rd| rd.entries.contains(&entry_at(2, 2)));
    assert!(entry.is_some() && entry <= ack, "the acknowledgement left before its entry: {readies:?}");
}

/// n2 grants its term-2 vote to n1 and restarts; n3 then asks for n2's vote in the same term.
fn vote_then_restart(bug_on_n2: Option<PlantedBug>) {
    let mut net = Network::with_config(&[1, 2, 3], move |c| {
        plain(c);
        if c.id == n(2) {
            c.planted_bug = bug_on_n2;
        }
    });
    net.act(1, RawNode::campaign_now);
    net.deliver_first(|m| m.to == n(2));
    assert_eq!(net.queued(|m| *m == vote_response(2, 1, 2, true)), 1);
    net.restart(2);
    assert_eq!((net.raft(2).term(), net.raft(2).status().vote), (Term(2), Some(n(1))));

    let mark = net.delivered.len();
    net.act(3, RawNode::campaign_now);
    assert_eq!(net.raft(3).term(), Term(2));
    net.deliver();
    assert_eq!(
        net.delivered_since(mark, |m| *m == vote_response(2, 3, 2, false)),
        1,
        "n2 voted twice in term 2"
    );
    assert_eq!(net.raft(1).role(), Role::Leader);
    assert_eq!((net.raft(3).role(), net.raft(3).leader()), (Role::Follower, Some(n(1))));
}

/// Persistent state survives a restart (Figure 2): a node that granted its vote and restarted
/// still refuses any other candidate in that term — otherwise two leaders could win it.
#[test]
fn rule_vote_is_durable_across_restart() {
    vote_then_restart(None);
}

/// The network's durability check has teeth: a host with the planted `ForgetHardState` bug
/// sends the grant before the vote is durable, and the network stops it.
#[test]
#[should_panic(expected = "before persisting its vote")]
fn rule_vote_is_durable_across_restart_catches_planted_forget_hard_state() {
    vote_then_restart(Some(PlantedBug::ForgetHardState));
}

// ================================================================ Figure 2: rules for servers

/// All servers: if a request or response carries a term T > currentTerm, set currentTerm = T
/// (durably, with no vote in it yet) and convert to follower — leader, candidate or follower.
#[test]
fn rule_higher_term_makes_node_follower() {
    let m = voters(&[1, 2, 3]);
    let refusal = MessageBody::AppendResponse {
        reject: true,
        index: LogIndex::ZERO,
        hint_index: LogIndex::ZERO,
        hint_term: None,
    };
    let mut r = leader(1, &m, plain);
    r.step(msg(2, 1, 5, refusal)).unwrap();
    let readies = flush(&mut r);
    assert_eq!((r.role(), r.term(), r.leader()), (Role::Follower, Term(5), None), "a leader");
    assert_eq!(readies.hard_state().map(|hs| (hs.term, hs.vote)), Some((Term(5), None)));

    let mut c = bootstrap(1, &m, plain);
    c.campaign_now();
    flush(&mut c);
    c.step(vote_response(2, 1, 4, false)).unwrap();
    let readies = flush(&mut c);
    assert_eq!((c.role(), c.term()), (Role::Follower, Term(4)), "a candidate");
    assert_eq!(readies.hard_state().map(|hs| (hs.term, hs.vote)), Some((Term(4), None)));

    let mut f = bootstrap(1, &m, plain);
    flush(&mut f);
    f.step(msg(3, 1, 6, MessageBody::Heartbeat { commit: LogIndex(1), read_seq: 1 })).unwrap();
    flush(&mut f);
    assert_eq!((f.role(), f.term(), f.leader()), (Role::Follower, Term(6), Some(n(3))), "a follower");

    // A leader cut off while the others elected a new one steps down on its first message.
    let mut net = Network::with_config(&[1, 2, 3], plain);
    net.elect(1);
    net.isolate(1);
    net.elect(2);
    net.heal();
    assert_eq!(net.raft(1).role(), Role::Leader);
    net.tick(2, net.peer(2).cfg.heartbeat_ticks as usize);
    net.deliver();
    let r = net.raft(1);
    assert_eq!((r.role(), r.term(), r.leader()), (Role::Follower, Term(3), Some(n(2))));
}

/// Candidates (§5.2): a candidate becomes leader once a majority voted for it — not before — and
/// then appends an entry of its own term (§8) and sends appends to every peer.
#[test]
fn rule_candidate_becomes_leader_with_majority() {
    let mut c = bootstrap(1, &voters(&[1, 2, 3, 4, 5]), plain);
    c.campaign_now();
    flush(&mut c);
    assert_eq!((c.role(), c.term()), (Role::Candidate, Term(2)));
    c.step(vote_response(2, 1, 2, true)).unwrap();
    c.step(vote_response(3, 1, 2, false)).unwrap();
    flush(&mut c);
    assert_eq!(c.role(), Role::Candidate, "leader with two votes of five");
    c.step(vote_response(4, 1, 2, true)).unwrap();
    let readies = flush(&mut c);
    assert_eq!((c.role(), c.term(), c.leader()), (Role::Leader, Term(2), Some(n(1))));
    let own = c.entry(LogIndex(2)).map(|e| (e.term, e.payload.clone()));
    assert_eq!(own, Some((Term(2), EntryPayload::Empty)), "no entry of the new term");
    let told: BTreeSet<NodeId> = readies
        .messages()
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Append { .. }))
        .map(|m| m.to)
        .collect();
    assert_eq!(told, set(&[2, 3, 4, 5]));

    // Three of five are enough; those that voted learn who leads.
    let mut net = Network::new(&[1, 2, 3, 4, 5]);
    net.isolate(4);
    net.isolate(5);
    net.elect(1);
    for id in 2..=3 {
        assert_eq!(net.raft(id).leader(), Some(n(1)), "n{id}");
    }
    assert!(net.raft(1).commit_index() >= LogIndex(2), "the new leader's entry did not commit");
}

/// Candidates (§5.2): an AppendEntries from a leader of the candidate's own term means another
/// node won: the candidate returns to follower in that term (keeping its vote) and processes
/// the append.
#[test]
fn rule_candidate_steps_down_on_append_from_current_leader() {
    let mut c = bootstrap(1, &voters(&[1, 2, 3]), plain);
    c.campaign_now();
    flush(&mut c);
    assert_eq!((c.role(), c.term()), (Role::Candidate, Term(2)));
    c.step(append(2, 1, 2, (1, 1), &[(2, 2)], 1)).unwrap();
    let messages = flush(&mut c).messages();
    assert_eq!((c.role(), c.term(), c.leader()), (Role::Follower, Term(2), Some(n(2))));
    assert_eq!(c.status().vote, Some(n(1)), "the vote of the term was forgotten");
    assert_eq!(messages, vec![append_ack(1, 2, 2, 2)]);
    assert_eq!(log_terms(&c), [1, 2]);
}

/// A candidate refused by a majority cannot win the term: it returns to follower in it (keeping
/// its own vote) instead of waiting out its election timeout as a candidate.
#[test]
fn rule_candidate_that_loses_majority_returns_to_follower() {
    let mut c = bootstrap(1, &voters(&[1, 2, 3, 4, 5]), plain);
    c.campaign_now();
    flush(&mut c);
    c.step(vote_response(2, 1, 2, false)).unwrap();
    c.step(vote_response(3, 1, 2, false)).unwrap();
    flush(&mut c);
    assert_eq!(c.role(), Role::Candidate, "gave up while it could still win");
    c.step(vote_response(4, 1, 2, false)).unwrap();
    flush(&mut c);
    assert_eq!((c.role(), c.term(), c.leader()), (Role::Follower, Term(2), None));
    assert_eq!(c.status().vote, Some(n(1)));
}

/// Followers (§5.2): a follower that hears from no leader for its election timeout — drawn from
/// [election_ticks, 2 * election_ticks) — starts an election; followers that keep hearing from a
/// leader never do.
#[test]
fn rule_election_timeout_starts_election() {
    let mut net = Network::with_config(&[1, 2, 3], plain);
    let election = net.peer(1).cfg.election_ticks as usize;
    net.tick(1, election - 1);
    assert_eq!((net.raft(1).role(), net.raft(1).term()), (Role::Follower, Term(1)), "campaigned early");
    assert_eq!(net.queue.len(), 0);
    net.tick(1, election);
    assert_eq!((net.raft(1).role(), net.raft(1).term()), (Role::Candidate, Term(2)));
    assert_eq!(net.queued(|m| matches!(m.body, MessageBody::Vote { .. })), 2);
    net.deliver();
    assert_eq!(net.raft(1).role(), Role::Leader);

    net.tick_all(10 * election);
    assert_eq!((net.raft(1).role(), net.raft(1).term()), (Role::Leader, Term(2)), "a follower campaigned");

    net.isolate(1);
    net.tick_all(4 * election);
    let leaders: Vec<u64> = (2..=3).filter(|&id| net.raft(id).role() == Role::Leader).collect();
    assert_eq!(leaders.len(), 1, "no follower took over from the lost leader");
    assert!(net.raft(leaders[0]).term() > Term(2));
}

/// Figure 8 on three nodes (plain configuration, one entry per append), up to the point where
/// the term-4 leader n1 has 3@2 — an entry of an older term — on a majority (n1, n2) but not its
/// own 4@4.
fn figure_8(bug: Option<PlantedBug>) -> Network {
    let mut net = Network::with_config(&[1, 2, 3], move |c| {
        plain(c);
        c.max_msg_entries = 1;
        c.planted_bug = bug;
    });
    // Term 2: n1 leads, appends 3@2 while cut off, and crashes.
    net.elect(1);
    net.isolate(1);
    let index = net.propose(1, cmd(1));
    assert_eq!(index, LogIndex(3));
    net.deliver();
    net.restart(1);
    // Term 3: n3 is elected by n2 and appends 3@3, which reaches no one; n3 crashes.
    net.drop_if(|m| m.from == n(3) && is_append_with_entries(m));
    net.elect(3);
    net.heal();
    net.isolate(3);
    net.restart(3);
    // Term 4: n1 is elected (its campaign in term 3 fails: n2 voted for n3 in it) and sends 3@2
    // to n2; 4@4 is on its way when n2's acknowledgement of 3 arrives.
    net.act(1, RawNode::campaign_now);
    net.deliver();
    assert_eq!((net.raft(1).role(), net.raft(1).term()), (Role::Candidate, Term(3)));
    net.act(1, RawNode::campaign_now);
    net.deliver_until(|m| *m == append_ack(2, 1, 4, 3));
    assert_eq!((net.raft(1).role(), net.raft(1).term()), (Role::Leader, Term(4)));
    assert_eq!(log_terms(net.raft(1)), [1, 2, 2, 4]);
    assert_eq!(log_terms(net.raft(2)), [1, 2, 2]);
    assert_eq!(log_terms(net.raft(3)), [1, 2, 3]);
    net
}

/// Figure 8, continued: n1 crashes before 4@4 reaches anyone; n3 restarts and, elected in term 5
/// by n2 (its last term, 3, beats n2's 2), overwrites index 3 everywhere.
fn figure_8_n3_overwrites_index_3(net: &mut Network) {
    net.isolate(1);
    net.deliver();
    net.restart(1);
    net.heal();
    // n3's campaign in term 4 fails: both voted for n1 in it.
    net.act(3, RawNode::campaign_now);
    net.deliver();
    assert_eq!((net.raft(3).role(), net.raft(3).term()), (Role::Follower, Term(4)));
    net.elect(3);
    net.tick(3, net.peer(3).cfg.heartbeat_ticks as usize);
    net.deliver();
}

/// Leaders (§5.4.2, Figure 8): a leader commits by counting replicas only entries of its own
/// term. 3@2 is on a majority, yet the term-4 leader does not commit it — rightly: n3, with a
/// later last term, can still be elected without it and overwrite it. Once the leader's own
/// entry is on a majority, everything before it commits with it.
#[test]
fn rule_leader_commits_only_current_term_entries_by_counting() {
    let mut net = figure_8(None);
    assert_eq!(net.raft(1).commit_index(), LogIndex(2), "n1 committed 3@2 by counting its replicas");

    figure_8_n3_overwrites_index_3(&mut net);
    for id in 1..=3 {
        let r = net.raft(id);
        assert_eq!(log_terms(r), [1, 2, 3, 5], "n{id}");
        assert_eq!(r.commit_index(), LogIndex(4), "n{id}");
        assert!(!net.commands(id).contains(&cmd(1)), "n{id} applied the overwritten 3@2");
    }

    // The same with n1's own entry on a majority: 3@2 commits together with 4@4.
    let mut net = figure_8(None);
    net.deliver();
    let r = net.raft(1);
    assert_eq!((r.role(), r.commit_index()), (Role::Leader, LogIndex(4)));
    assert_eq!(net.commands(1), [cmd(1)]);
}

/// The Figure 8 scenario has teeth: with the planted `CommitOldTerm` bug n1 commits 3@2 as soon
/// as n2 holds it.
#[test]
fn rule_leader_commits_only_current_term_entries_by_counting_catches_planted_commit_old_term() {
    let net = figure_8(Some(PlantedBug::CommitOldTerm));
    assert_eq!(net.raft(1).commit_index(), LogIndex(3));
    assert_eq!(net.commands(1), [cmd(1)], "n1 applied 3@2");
}

/// … and the network's State Machine Safety check catches what follows: n3 overwrites and
/// applies index 3, which n1 applied with another entry.
#[test]
#[should_panic(expected = "State Machine Safety")]
fn rule_leader_commits_only_current_term_entries_planted_commit_old_term_breaks_state_machine_safety() {
    let mut net = figure_8(Some(PlantedBug::CommitOldTerm));
    figure_8_n3_overwrites_index_3(&mut net);
}

/// Leader Append-Only (§5.3): a leader never overwrites or deletes entries in its log; it only
/// appends. A follower with a longer, conflicting log is repaired to the leader's — never the
/// reverse — and an append claiming the leader's own term changes nothing on the leader.
#[test]
fn rule_leader_never_overwrites_its_log() {
    let mut net = Network::with_config(&[1, 2, 3], plain);
    net.elect(2);
    net.isolate(2);
    net.propose_batch(2, (0..5).map(cmd));
    net.deliver();
    net.elect(1);
    net.propose(1, cmd(10));
    net.deliver();
    let log = log_of(net.raft(1));
    assert_eq!((log.len(), net.raft(2).last_index()), (4, LogIndex(7)), "n2's log is longer");

    net.heal();
    net.tick(1, net.peer(1).cfg.heartbeat_ticks as usize);
    net.deliver();
    assert_eq!(net.raft(1).role(), Role::Leader);
    assert_eq!(log_of(net.raft(1)), log, "the leader's log changed");
    assert_eq!(net.peer(1).store.entries, log, "the leader's durable log changed");
    assert_eq!(log_of(net.raft(2)), log, "n2 was not repaired");

    let term = net.raft(1).term().0;
    let forged = append(3, 1, term, (1, 1), &[(2, term), (3, term)], 1);
    net.act(1, |r| r.step(forged)).unwrap();
    assert_eq!(net.raft(1).role(), Role::Leader);
    assert_eq!(log_of(net.raft(1)), log, "an append in the leader's term changed its log");
}

// ================================================================ pre-vote (§9.6)

/// Answering a pre-vote changes nothing at the voter — not its term, not its vote, no hard state
/// to persist — so the vote is still free for a real candidate of that term. The pre-candidate
/// keeps its own term and vote too, until a majority says it could win.
#[test]
fn prevote_does_not_change_voter_term_or_vote() {
    let m = voters(&[1, 2, 3]);
    let mut v = bootstrap(2, &m, defaults);
    flush(&mut v);
    v.step(msg(1, 2, 2, MessageBody::PreVote { last_index: LogIndex(1), last_term: Term(1) })).unwrap();
    let readies = flush(&mut v);
    assert_eq!(readies.messages(), vec![msg(2, 1, 2, MessageBody::PreVoteResponse { reject: false })]);
    assert_eq!(readies.hard_state(), None, "a pre-vote changed durable state");
    assert_eq!((v.term(), v.status().vote), (Term(1), None));
    v.step(vote_request(3, 2, 2, (1, 1))).unwrap();
    assert_eq!(vote_answer(&flush(&mut v).messages(), 3), Some(true), "the pre-vote used up the vote");

    let mut c = bootstrap(1, &m, defaults);
    c.campaign_now();
    let readies = flush(&mut c);
    assert_eq!((c.role(), c.term(), c.status().vote), (Role::PreCandidate, Term(1), None));
    assert_eq!(readies.hard_state(), None);
    let requests = readies.messages();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|m| matches!(m.body, MessageBody::PreVote { .. }) && m.term == Term(2)));
}

/// A node cut off from the group keeps timing out, but its pre-votes go unanswered, so its term
/// stays put; when it rejoins, the leader is undisturbed — same leader, same term — and the node
/// follows it. Without pre-vote the same partition deposes the leader.
#[test]
fn prevote_rejoining_partitioned_node_does_not_disrupt_stable_leader() {
    for pre_vote in [true, false] {
        let mut net = Network::with_config(&[1, 2, 3], |c| c.pre_vote = pre_vote);
        net.elect(1);
        let term = net.raft(1).term();
        let election = net.peer(1).cfg.election_ticks as usize;
        net.isolate(3);
        let mark = net.dropped.len();
        net.tick_all(5 * election);
        let campaigns = net.dropped[mark..]
            .iter()
            .filter(|m| {
                m.from == n(3) && matches!(m.body, MessageBody::PreVote { .. } | MessageBody::Vote { .. })
            })
            .count();
        assert!(campaigns >= 4, "n3 campaigned {campaigns} times");
        net.heal();
        net.tick_all(2 * election);
        let (r1, r3) = (net.raft(1), net.raft(3));
        if pre_vote {
            assert_eq!(r3.term(), term, "n3's term grew while it was cut off");
            assert_eq!(
                (r1.role(), r1.term()),
                (Role::Leader, term),
                "the rejoining node disrupted the leader"
            );
            assert_eq!((r3.role(), r3.leader()), (Role::Follower, Some(n(1))));
        } else {
            assert!(
                r1.term() > term,
                "without pre-vote the leader was not disturbed: the test shows nothing"
            );
        }
    }
}

/// A pre-candidate refused by a majority — here in its own term, because its log is behind —
/// returns to follower without raising its term.
#[test]
fn prevote_candidate_that_loses_returns_to_follower() {
    // No check-quorum, so the voters answer rather than ignore the pre-vote.
    let mut net = Network::with_config(&[1, 2, 3], |c| c.check_quorum = false);
    net.elect(1);
    let term = net.raft(1).term();
    net.isolate(3);
    net.propose(1, cmd(1));
    net.deliver();
    net.heal();
    net.act(3, |r| r.campaign_now());
    assert_eq!(net.raft(3).role(), Role::PreCandidate);
    let mark = net.delivered.len();
    net.deliver();
    let refusals = net.delivered_since(mark, |m| {
        m.to == n(3) && m.body == MessageBody::PreVoteResponse { reject: true } && m.term == term
    });
    assert_eq!(refusals, 2, "both voters refuse: n3's log is behind");
    assert_eq!(net.raft(3).term(), term);
    assert_eq!(
        net.raft(3).role(),
        Role::Follower,
        "a pre-candidate refused by a majority is still campaigning"
    );
}

/// A pre-vote refused by a voter in a higher term returns the pre-candidate to follower in that
/// term.
#[test]
fn prevote_refusal_from_higher_term_returns_to_follower() {
    let mut c = bootstrap(1, &voters(&[1, 2, 3]), defaults);
    c.campaign_now();
    flush(&mut c);
    assert_eq!(c.role(), Role::PreCandidate);
    c.step(msg(2, 1, 5, MessageBody::PreVoteResponse { reject: true })).unwrap();
    flush(&mut c);
    assert_eq!((c.role(), c.term()), (Role::Follower, Term(5)));
}

// ================================================================ check-quorum (§6.2, §9.6)

/// A leader that has not heard from a quorum for an election timeout steps down (in the same
/// term). The check runs every election_ticks over the previous window, so it takes between one
/// and two election timeouts; a leader that does hear from a quorum stays.
#[test]
fn check_quorum_isolated_leader_steps_down_after_election_ticks() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.raft(1).term();
    let election = net.peer(1).cfg.election_ticks as usize;

    net.tick_all(5 * election);
    assert_eq!(net.raft(1).role(), Role::Leader, "a leader with a quorum must stay");

    net.isolate(1);
    net.tick(1, election - 1);
    assert_eq!(net.raft(1).role(), Role::Leader, "stepped down before an election timeout");
    net.tick(1, election + 1);
    assert_eq!((net.raft(1).role(), net.raft(1).term()), (Role::Follower, term));
    assert_eq!(net.raft(1).leader(), None);
    assert!(matches!(net.act(1, |r| r.propose(cmd(1))), Err(RaftError::NotLeader { .. })));
}

/// Leader stickiness: a follower that heard from its leader within an election timeout ignores
/// a vote request of a higher term — no answer, no term change — so a disruptive candidate
/// cannot depose a live leader.
#[test]
fn check_quorum_follower_ignores_vote_request_while_leader_is_recent() {
    let mut net = Network::with_config(&[1, 2, 3], |c| c.pre_vote = false);
    net.elect(1);
    let term = net.raft(1).term();
    let mark = net.delivered.len();
    net.act(3, |r| r.campaign_now());
    assert_eq!(net.raft(3).term(), term.next());
    net.deliver();
    assert_eq!(net.delivered_since(mark, |m| matches!(m.body, MessageBody::VoteResponse { .. })), 0);
    assert_eq!((net.raft(2).term(), net.raft(2).status().vote), (term, Some(n(1))));
    assert_eq!((net.raft(1).role(), net.raft(1).term()), (Role::Leader, term));
    assert_eq!(net.raft(3).role(), Role::Candidate);
}

/// Stickiness yields to leader transfer: a vote request started by `TimeoutNow` is honoured by
/// followers that heard from the leader a moment ago.
#[test]
fn check_quorum_transfer_vote_is_honoured_despite_stickiness() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.raft(1).term();
    let (last_index, last_term) = (net.raft(2).last_index(), net.raft(2).log_term(net.raft(2).last_index()));
    let request = |transfer| {
        let body = MessageBody::Vote { last_index, last_term: last_term.unwrap(), transfer };
        Message { from: n(2), to: n(3), term: term.next(), body }
    };
    net.act(3, |r| r.step(request(false))).unwrap();
    assert_eq!(net.queued(|m| m.from == n(3)), 0, "an ordinary vote request is ignored");
    assert_eq!(net.raft(3).term(), term);
    net.act(3, |r| r.step(request(true))).unwrap();
    let grant = msg(3, 2, term.next().0, MessageBody::VoteResponse { reject: false });
    assert_eq!(net.queued(|m| *m == grant), 1, "a transfer's vote request is granted");
}

/// Stickiness must survive a forced campaign: a follower that heard from the leader a moment
/// ago and is then told to campaign (`campaign_now`) must still not help another candidate
/// depose that leader within an election timeout. Otherwise a new leader is elected and commits
/// while the old leader's lease still holds, and the old leader serves stale lease reads.
#[test]
fn check_quorum_campaigning_follower_still_refuses_to_depose_a_recent_leader() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.tick(1, net.peer(1).cfg.heartbeat_ticks as usize);
    net.deliver();
    assert!(net.raft(1).lease_valid());
    net.isolate(1);
    // n2's own pre-vote fails (n3 heard from n1 too), but n2 is now a pre-candidate.
    net.act(2, |r| r.campaign_now());
    net.deliver();
    assert_eq!(net.raft(2).role(), Role::PreCandidate);
    net.act(3, |r| r.campaign_now());
    net.deliver();
    assert_ne!(net.raft(3).role(), Role::Leader, "n2 helped depose n1 right after hearing from it");
    assert!(net.raft(1).lease_valid());
    // With n3 elected, this read would be served from n1's lease below n3's commit index.
    net.read(1, 1, ReadMode::Lease).unwrap();
}

/// A replica that restarts waits one election timeout before it votes: it may have acknowledged
/// a heartbeat just before it crashed, and that leader's lease counts on the acknowledgement.
#[test]
fn check_quorum_restarted_node_waits_an_election_timeout_before_voting() {
    let election = config(1, defaults).election_ticks as usize;
    let mut r =
        RawNode::new(config(1, defaults), restored_state(&voters(&[1, 2, 3]), &[2], 2, 1), 1).unwrap();
    r.step(vote_request(2, 1, 3, (2, 2))).unwrap();
    assert!(flush(&mut r).messages().is_empty(), "a just-restarted node answered a vote request");
    assert_eq!(r.term(), Term(2));
    for _ in 0..election {
        r.tick();
    }
    flush(&mut r);
    r.step(vote_request(2, 1, 3, (2, 2))).unwrap();
    assert_eq!(vote_answer(&flush(&mut r).messages(), 2), Some(true));
}

// ================================================================ joint consensus (§4.3)

/// A leader removed by a change leads the joint phase and C_new's replication, but steps down
/// once C_new commits — not before — and never campaigns again; the new voters elect a leader.
#[test]
fn joint_leader_not_in_new_config_steps_down_once_c_new_commits() {
    let mut net = Network::new(&[1, 2, 3]);
    net.add_joiner(4, defaults);
    net.elect(1);
    let term = net.raft(1).term();
    let change = ConfChange::Change(vec![(n(1), ConfChangeKind::Remove), (n(4), ConfChangeKind::AddVoter)]);
    let joint = net.conf_change(1, change).unwrap();
    // Hold every acknowledgement of C_new (the entry after the joint one).
    net.hold_if(
        move |m| matches!(m.body, MessageBody::AppendResponse { reject: false, index, .. } if index > joint),
    );
    net.deliver();
    let c_new = voters(&[2, 3, 4]);
    let leader = net.raft(1);
    assert_eq!(leader.commit_index(), joint, "the joint entry commits");
    assert_eq!(leader.membership(), &c_new, "the leader appended C_new by itself");
    assert_eq!(leader.role(), Role::Leader, "it leads until C_new commits, though not a member of it");

    net.release();
    net.deliver();
    assert_eq!((net.raft(1).role(), net.raft(1).term()), (Role::Follower, term));
    assert_eq!(net.raft(1).commit_index(), joint.next());

    let election = net.peer(1).cfg.election_ticks as usize;
    net.tick_all(6 * election);
    assert_eq!(net.raft(1).role(), Role::Follower);
    assert_eq!(net.raft(1).term(), term, "the removed node campaigned");
    let leaders: Vec<u64> = (2..=4).filter(|&id| net.raft(id).role() == Role::Leader).collect();
    assert_eq!(leaders.len(), 1, "C_new elects a leader");
    assert!(net.raft(leaders[0]).commit_index() > joint.next());
}

/// Learners receive the log but never count toward a quorum: an entry held by the leader and
/// every learner is not committed until a voter majority has it, and a candidate cannot win on
/// learners' votes (it does not even ask them).
#[test]
fn joint_learner_never_counts_toward_quorum() {
    let m = Membership { learners: set(&[4, 5]), ..voters(&[1, 2, 3]) };
    let mut net = Network::with_membership(&m, defaults);
    net.elect(1);
    net.hold_if(|m| m.to == n(2) || m.to == n(3));
    let index = net.propose(1, cmd(1));
    net.deliver();
    assert!(net.raft(4).last_index() >= index && net.raft(5).last_index() >= index);
    assert!(net.raft(1).commit_index() < index, "committed with learners' acknowledgements");
    net.release();
    net.deliver();
    assert!(net.raft(1).commit_index() >= index);

    let mut c = bootstrap(1, &m, plain);
    c.campaign_now();
    let asked: BTreeSet<NodeId> = flush(&mut c).messages().iter().map(|m| m.to).collect();
    assert_eq!(asked, set(&[2, 3]), "learners are not asked to vote");
    c.step(vote_response(4, 1, 2, true)).unwrap();
    c.step(vote_response(5, 1, 2, true)).unwrap();
    flush(&mut c);
    assert_eq!(c.role(), Role::Candidate, "learners' votes made it leader");
    c.step(vote_response(2, 1, 2, true)).unwrap();
    flush(&mut c);
    assert_eq!(c.role(), Role::Leader);
}

/// Learners never campaign: not on election timeout, not on `campaign_now`, not on `TimeoutNow`,
/// and a leader refuses to transfer leadership to one.
#[test]
fn joint_learner_never_campaigns() {
    let m = Membership { learners: set(&[4]), ..voters(&[1, 2, 3]) };
    let mut net = Network::with_membership(&m, defaults);
    let election = net.peer(4).cfg.election_ticks as usize;
    net.tick(4, 10 * election);
    net.act(4, |r| r.campaign_now());
    net.act(4, |r| r.step(msg(1, 4, 1, MessageBody::TimeoutNow))).unwrap();
    assert_eq!((net.raft(4).role(), net.raft(4).term()), (Role::Follower, Term(1)));
    assert_eq!(net.queued(|m| m.from == n(4)), 0, "the learner sent {:?}", net.queue);

    net.deliver();
    net.elect(1);
    let refused = net.act(1, |r| r.transfer_leader(n(4)));
    assert!(matches!(refused, Err(RaftError::InvalidTransfer(_))), "{refused:?}");
}

/// One membership change at a time: while a membership entry is uncommitted, or a joint
/// membership has not been left, another change is refused with `ConfChangePending`.
#[test]
fn joint_second_change_while_pending_is_refused() {
    let mut net = Network::new(&[1, 2, 3]);
    net.add_joiner(4, defaults);
    net.add_joiner(5, defaults);
    net.elect(1);
    let joint = net.conf_change(1, add_voter(4)).unwrap();
    assert_eq!(net.conf_change(1, add_learner(5)), Err(RaftError::ConfChangePending), "joint, uncommitted");

    // The joint entry commits; C_new is appended but its acknowledgements are held.
    net.hold_if(
        move |m| matches!(m.body, MessageBody::AppendResponse { reject: false, index, .. } if index > joint),
    );
    net.deliver();
    assert_eq!(net.raft(1).commit_index(), joint);
    assert!(!net.raft(1).membership().is_joint());
    assert_eq!(net.conf_change(1, add_learner(5)), Err(RaftError::ConfChangePending), "C_new uncommitted");

    net.release();
    net.deliver();
    let learner = net.conf_change(1, add_learner(5)).expect("nothing pending any more");
    assert_eq!(
        net.conf_change(1, add_learner(6)),
        Err(RaftError::ConfChangePending),
        "learner change pending"
    );
    net.deliver();
    assert!(net.raft(1).commit_index() >= learner);
    assert!(net.conf_change(1, add_learner(6)).is_ok());
}

/// A membership takes effect when its entry is appended, committed or not (§4.1): a follower
/// that appends C_new stops being able to campaign at once; when a new leader truncates that
/// uncommitted entry, the membership reverts to the previous entry's.
#[test]
fn joint_config_takes_effect_when_appended_not_committed() {
    let old = voters(&[1, 2, 3]);
    let demote_2 = ConfChange::Change(vec![(n(2), ConfChangeKind::AddLearner)]);
    let joint = old.apply(&demote_2).unwrap();
    let c_new = joint.apply(&ConfChange::LeaveJoint).unwrap();
    assert!(c_new.is_learner(n(2)));
    let membership_entry = |index: u64, m: &Membership| Entry {
        index: LogIndex(index),
        term: Term(2),
        payload: EntryPayload::Membership(m.clone()),
    };

    let mut r = bootstrap(2, &old, plain);
    flush(&mut r);
    let body = MessageBody::Append {
        prev_index: LogIndex(1),
        prev_term: Term(1),
        entries: vec![membership_entry(2, &joint), membership_entry(3, &c_new)],
        commit: LogIndex(2),
    };
    r.step(msg(1, 2, 2, body)).unwrap();
    flush(&mut r);
    assert_eq!(r.commit_index(), LogIndex(2), "C_new (entry 3) is not committed");
    assert_eq!(r.membership(), &c_new, "but it is in effect");
    r.campaign_now();
    assert_eq!((r.role(), r.term()), (Role::Follower, Term(2)), "a learner of C_new campaigned");

    // n3 wins term 3 without entry 3 and overwrites it.
    r.step(append(3, 2, 3, (2, 2), &[(3, 3)], 2)).unwrap();
    flush(&mut r);
    assert_eq!(r.membership(), &joint, "the truncated membership entry must stop being in effect");
    r.campaign_now();
    assert_eq!((r.role(), r.term()), (Role::Candidate, Term(4)), "n2 is an outgoing voter again");

    // The leader's side: a proposed membership is in effect on the leader before it commits.
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let index = net.act(1, |r| r.propose_conf_change(add_learner(4))).unwrap();
    assert!(net.raft(1).commit_index() < index);
    assert!(net.raft(1).membership().is_learner(n(4)));
}

/// The change that replaces voters 2 and 3 of {1,2,3} with 4 and 5.
fn replace_2_3_with_4_5() -> ConfChange {
    ConfChange::Change(vec![
        (n(4), ConfChangeKind::AddVoter),
        (n(5), ConfChangeKind::AddVoter),
        (n(2), ConfChangeKind::Remove),
        (n(3), ConfChangeKind::Remove),
    ])
}

/// {1,2,3} with joiners 4 and 5; n1 leads and replaces 2 and 3 with 4 and 5 while n2 and n3 do
/// not hear from it. Returns the network and the joint entry's index.
fn replace_two_voters(bug: Option<PlantedBug>) -> (Network, LogIndex) {
    let tweak = move |c: &mut Config| c.planted_bug = bug;
    let mut net = Network::with_config(&[1, 2, 3], tweak);
    net.add_joiner(4, tweak);
    net.add_joiner(5, tweak);
    net.elect(1);
    net.hold_if(|m| m.to == n(2) || m.to == n(3));
    let joint = net.conf_change(1, replace_2_3_with_4_5()).unwrap();
    // A proposal after the change makes the leader probe the joiners (see
    // joint_new_voters_catch_up_without_further_proposals for why that is needed).
    net.propose(1, cmd(1));
    net.deliver();
    assert!(net.raft(4).last_index() > joint && net.raft(5).last_index() > joint);
    (net, joint)
}

/// Replacing voters on an idle group: the new voters must receive the joint entry (they are
/// needed for C_new's majority) and the change must complete, with no further proposals.
#[test]
fn joint_new_voters_catch_up_without_further_proposals() {
    let mut net = Network::new(&[1, 2, 3]);
    net.add_joiner(4, defaults);
    net.add_joiner(5, defaults);
    net.elect(1);
    let joint = net.conf_change(1, replace_2_3_with_4_5()).unwrap();
    net.deliver();
    net.tick_all(3 * net.peer(1).cfg.election_ticks as usize);
    assert!(net.raft(4).last_index() >= joint, "n4 never received the joint entry");
    assert!(net.raft(1).commit_index() > joint, "the joint entry never committed");
    assert_eq!(net.raft(1).membership(), &voters(&[1, 4, 5]));
}

/// In a joint membership every decision needs a majority of C_old and of C_new. Commit: C_new =
/// {1,4,5} holds the joint entry but C_old = {1,2,3} does not, so it does not commit. Election:
/// votes of one half alone do not make a leader.
#[test]
fn joint_decisions_need_both_majorities() {
    let (mut net, joint) = replace_two_voters(None);
    assert!(net.raft(1).commit_index() < joint, "committed with C_new's majority alone");
    net.release();
    net.deliver();
    assert!(net.raft(1).commit_index() >= joint);

    let joint_membership = voters(&[1, 2, 3]).apply(&replace_2_3_with_4_5()).unwrap();
    for (halves_voting, wins) in [(&[4, 5][..], false), (&[2, 3][..], false), (&[2, 4][..], true)] {
        let mut c = bootstrap(1, &joint_membership, plain);
        c.campaign_now();
        flush(&mut c);
        for &voter in halves_voting {
            c.step(vote_response(voter, 1, 2, true)).unwrap();
        }
        flush(&mut c);
        assert_eq!(c.role() == Role::Leader, wins, "votes of n1 and {halves_voting:?}");
    }
}

/// The same commit scenario has teeth: the planted `JointSingleQuorum` bug commits early.
#[test]
fn joint_decisions_need_both_majorities_catches_planted_single_quorum() {
    let (net, joint) = replace_two_voters(Some(PlantedBug::JointSingleQuorum));
    assert!(net.raft(1).commit_index() >= joint);
}

/// Once the joint entry commits, the leader proposes C_new by itself; when that commits, every
/// member uses C_new and the group accepts the next change.
#[test]
fn joint_leader_leaves_joint_automatically() {
    let mut net = Network::new(&[1, 2, 3]);
    net.add_joiner(4, defaults);
    net.elect(1);
    let joint = net.conf_change(1, add_voter(4)).unwrap();
    assert!(net.raft(1).membership().is_joint());
    net.deliver();
    let c_new = voters(&[1, 2, 3, 4]);
    let leave = net.raft(1).entry(joint.next()).cloned().expect("C_new appended after the joint entry");
    assert_eq!(leave.payload, EntryPayload::Membership(c_new.clone()));
    net.tick(1, net.peer(1).cfg.heartbeat_ticks as usize);
    net.deliver();
    for id in 1..=4 {
        assert_eq!(net.raft(id).membership(), &c_new, "n{id}");
        assert!(net.raft(id).commit_index() >= joint.next(), "n{id} has not committed C_new");
    }
    assert!(net.conf_change(1, add_learner(5)).is_ok());
}

/// If the leader that committed the joint entry dies before C_new leaves it, the next leader
/// finishes the change: once it commits an entry of its term it proposes C_new itself.
#[test]
fn joint_new_leader_leaves_joint_left_unfinished() {
    // Figure 2 config, so that n2 can be elected at once while n1's followers still remember it.
    let mut net = Network::with_config(&[1, 2, 3], plain);
    net.add_joiner(4, plain);
    net.elect(1);
    let joint = net.conf_change(1, add_voter(4)).unwrap();
    // n1's messages after the joint entry commits (C_new and the new commit index) are lost.
    net.drop_if(move |m| {
        m.from == n(1) && matches!(&m.body, MessageBody::Append { entries, .. } if entries.iter().any(|e| e.index > joint))
    });
    net.deliver();
    assert_eq!(net.raft(1).commit_index(), joint);
    assert!(net.raft(2).membership().is_joint(), "n2 must not have seen C_new");
    net.heal();
    net.isolate(1);
    net.elect(2);
    net.deliver();
    let c_new = voters(&[1, 2, 3, 4]);
    for id in 2..=4 {
        assert_eq!(net.raft(id).membership(), &c_new, "n{id}");
    }
    let membership_index = net.raft(2).last_index();
    net.tick(2, net.peer(2).cfg.heartbeat_ticks as usize);
    net.deliver();
    assert!(net.raft(2).commit_index() >= membership_index);
    assert!(net.conf_change(2, add_learner(5)).is_ok(), "the change never finished");
}

/// A voter demoted to learner stays an outgoing voter during the joint phase and becomes a
/// learner when it is left; from then on it never campaigns.
#[test]
fn joint_demoted_voter_becomes_learner_when_joint_is_left() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let joint = net.conf_change(1, add_learner(3)).unwrap();
    let m = net.raft(1).membership().clone();
    assert!(m.is_joint() && m.is_voter(n(3)) && m.learners_next.contains(&n(3)));
    net.deliver();
    net.tick(1, net.peer(1).cfg.heartbeat_ticks as usize);
    net.deliver();
    let c_new = Membership { learners: set(&[3]), ..voters(&[1, 2]) };
    assert!(net.raft(1).commit_index() > joint);
    for id in 1..=3 {
        assert_eq!(net.raft(id).membership(), &c_new, "n{id}");
    }
    let term = net.raft(3).term();
    net.isolate(1);
    net.tick(3, 10 * net.peer(3).cfg.election_ticks as usize);
    assert_eq!((net.raft(3).role(), net.raft(3).term()), (Role::Follower, term));
}

// ================================================================ log replication

/// Appends to a follower carry at most `max_msg_entries` entries each (§10.2.1 batching).
#[test]
fn replication_batching_respects_max_msg_entries() {
    let mut net = Network::with_config(&[1, 2, 3], |c| c.max_msg_entries = 3);
    net.elect(1);
    let mark = net.delivered.len();
    net.propose_batch(1, (0..10).map(cmd));
    net.deliver();
    for follower in [2, 3] {
        let sizes: Vec<usize> = net.delivered[mark..]
            .iter()
            .filter_map(|m| match &m.body {
                MessageBody::Append { entries, .. } if m.to == n(follower) && !entries.is_empty() => {
                    Some(entries.len())
                }
                _ => None,
            })
            .collect();
        assert_eq!(sizes, vec![3, 3, 3, 1], "appends to n{follower}");
    }
    net.heartbeat(1);
    for follower in [2, 3] {
        assert_eq!(net.commands(follower).len(), 10);
    }
}

/// A commit sends no message of its own: followers learn the commit index with the next append
/// or heartbeat (each write would otherwise cost an empty append and its response per follower).
#[test]
fn a_commit_rides_on_the_next_append_or_heartbeat() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.heartbeat(1);
    let mark = net.delivered.len();
    net.propose(1, cmd(1));
    net.deliver();
    assert_eq!(net.commands(1).len(), 1, "the leader applied the write");
    let empty_appends = net.delivered_since(
        mark,
        |m| matches!(&m.body, MessageBody::Append { entries, .. } if entries.is_empty()),
    );
    assert_eq!(empty_appends, 0, "no append without entries for the commit");
    assert!(net.commands(2).is_empty() && net.commands(3).is_empty(), "followers do not know yet");
    // The next write carries the previous commit.
    net.propose(1, cmd(2));
    net.deliver();
    assert_eq!(net.commands(2).len(), 1);
    net.heartbeat(1);
    for id in [2, 3] {
        assert_eq!(net.commands(id).len(), 2, "n{id} after the heartbeat");
    }
}

/// Appends also stay under `max_msg_bytes` (but carry at least one entry).
#[test]
fn replication_batching_respects_max_msg_bytes() {
    let mut net = Network::with_config(&[1, 2, 3], |c| c.max_msg_bytes = 300);
    net.elect(1);
    let mark = net.delivered.len();
    net.propose_batch(1, (0..6).map(|_| vec![7; 100]));
    net.deliver();
    let bytes: Vec<usize> = net.delivered[mark..]
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Append { entries, .. } if m.to == n(2) && !entries.is_empty() => {
                Some(entries.iter().map(Entry::size_bytes).sum())
            }
            _ => None,
        })
        .collect();
    assert_eq!(bytes.len(), 3, "{bytes:?}");
    assert!(bytes.iter().all(|&b| b <= 300), "{bytes:?}");
    net.heartbeat(1);
    assert_eq!(net.commands(2).len(), 6);
}

/// Pipelining: a follower in `Replicate` has at most `max_inflight_msgs` unacknowledged appends;
/// each acknowledgement opens exactly one slot.
#[test]
fn replication_pipelining_respects_max_inflight_msgs() {
    let mut net = Network::with_config(&[1, 2, 3], |c| {
        c.max_inflight_msgs = 2;
        c.max_msg_entries = 1;
    });
    net.elect(1);
    net.propose_batch(1, (0..10).map(cmd));
    let to_2 = |m: &Message| m.to == n(2) && is_append_with_entries(m);
    assert_eq!(net.queued(to_2), 2, "ten entries, window of two");
    assert_eq!(net.queued(|m| m.to == n(3) && is_append_with_entries(m)), 2);

    net.deliver_first(to_2);
    net.deliver_first(|m| m.from == n(2) && matches!(m.body, MessageBody::AppendResponse { .. }));
    assert_eq!(net.queued(to_2), 2, "one acknowledgement, one more append");

    net.deliver();
    for id in 1..=3 {
        assert_eq!(net.raft(id).last_index(), LogIndex(12), "n{id}");
    }
    // The last commit index reaches a follower whose window was full with the next heartbeat.
    net.tick(1, net.peer(1).cfg.heartbeat_ticks as usize);
    net.deliver();
    for id in 1..=3 {
        assert_eq!(net.commands(id).len(), 10, "n{id}");
    }
}

/// Limits everywhere: a leader refuses proposals once `max_uncommitted_entries` are appended but
/// not committed, and accepts them again as they commit.
#[test]
fn replication_proposals_refused_beyond_max_uncommitted_entries() {
    let mut net = Network::with_config(&[1, 2, 3], |c| c.max_uncommitted_entries = 3);
    net.elect(1);
    net.hold_if(|m| m.from == n(1));
    for i in 0..3 {
        net.propose(1, cmd(i));
    }
    assert_eq!(net.act(1, |r| r.propose(cmd(3))), Err(RaftError::ProposalLimit { uncommitted: 3 }));
    net.release();
    net.deliver();
    assert!(net.act(1, |r| r.propose(cmd(3))).is_ok());
}

/// Fast backtracking (thesis §5.3): a follower whose log diverges over many entries is repaired
/// in a number of round trips bounded by the diverging *terms*, not entries. n2 holds 50 stale
/// entries of term 2; the leader (term 4) has 60 of term 3 at those indexes.
#[test]
fn replication_fast_backtracking_converges_in_term_rounds() {
    let mut net = Network::with_config(&[1, 2, 3], plain);
    net.elect(2);
    net.isolate(2);
    net.propose_batch(2, (0..50).map(cmd));
    net.deliver();
    net.elect(1);
    net.propose_batch(1, (100..160).map(cmd));
    net.deliver();
    net.elect(3);
    net.deliver();
    assert_eq!(net.raft(2).last_index(), LogIndex(52));
    assert_eq!(net.raft(3).last_index(), LogIndex(64));

    net.heal();
    let mark = net.delivered.len();
    net.tick(3, net.peer(3).cfg.heartbeat_ticks as usize);
    net.deliver();
    let rejections = net.delivered_since(mark, |m| {
        m.from == n(2) && matches!(m.body, MessageBody::AppendResponse { reject: true, .. })
    });
    assert!(rejections <= 3, "{rejections} rejections to repair a log diverging over 2 terms");
    assert_eq!(log_of(net.raft(2)), log_of(net.raft(3)), "n2's log was not repaired");
    assert_eq!(net.commands(2), net.commands(3));
}

/// A lost append is recovered by the next one: the follower refuses it (there is a gap), the
/// leader probes back and resends what was lost. n3 is down, so nothing else moves the commit.
#[test]
fn replication_lost_append_is_recovered_by_next_append() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    net.drop_once(|m| m.to == n(2) && is_append_with_entries(m));
    let lost = net.propose(1, cmd(1));
    net.deliver();
    assert!(net.raft(2).last_index() < lost);
    assert!(net.raft(1).commit_index() < lost, "committed without n2");

    let mark = net.delivered.len();
    let next = net.propose(1, cmd(2));
    net.deliver();
    let refused = net.delivered_since(mark, |m| {
        m.from == n(2) && matches!(m.body, MessageBody::AppendResponse { reject: true, .. })
    });
    assert_eq!(refused, 1, "n2 should refuse the append that follows the gap");
    assert_eq!(net.raft(1).commit_index(), next);
    net.tick(1, net.peer(1).cfg.heartbeat_ticks as usize);
    net.deliver();
    assert_eq!(net.commands(2), [cmd(1), cmd(2)]);
}

/// A lost append is recovered without new proposals: heartbeat responses show the leader that
/// the follower is behind, and it resends. Here n3 is down, so until n2 has the entry the
/// group cannot commit at all, although a quorum (n1, n2) is up and connected.
#[test]
fn replication_lost_append_is_recovered_by_heartbeat() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.isolate(3);
    net.drop_once(|m| m.to == n(2) && is_append_with_entries(m));
    let lost = net.propose(1, cmd(1));
    net.deliver();
    assert!(net.raft(2).last_index() < lost);
    net.tick_all(3 * net.peer(1).cfg.election_ticks as usize);
    assert_eq!(net.raft(1).role(), Role::Leader);
    assert_eq!(net.raft(2).last_index(), lost, "n2 never got the lost entry back");
    assert_eq!(net.raft(1).commit_index(), lost, "n1 and n2 never committed it");
}

// ================================================================ leader transfer (§3.10)

/// Transfer to an up-to-date follower: the leader sends `TimeoutNow` at once, the target
/// campaigns without pre-vote (its vote requests marked `transfer`) and wins the next term.
#[test]
fn transfer_to_up_to_date_follower_elects_it() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let term = net.raft(1).term();
    let mark = net.delivered.len();
    net.act(1, |r| r.transfer_leader(n(2))).unwrap();
    assert_eq!(net.queued(|m| m.body == MessageBody::TimeoutNow && m.to == n(2)), 1);
    net.deliver();
    assert_eq!((net.raft(2).role(), net.raft(2).term()), (Role::Leader, term.next()));
    assert_eq!((net.raft(1).role(), net.raft(1).leader()), (Role::Follower, Some(n(2))));
    let transfer_votes =
        net.delivered_since(mark, |m| matches!(m.body, MessageBody::Vote { transfer: true, .. }));
    assert_eq!(transfer_votes, 2);
    assert_eq!(net.delivered_since(mark, |m| matches!(m.body, MessageBody::PreVote { .. })), 0);
}

/// During a transfer the leader refuses proposals (they could make the target fall behind);
/// a transfer that does not complete within an election timeout is abandoned.
#[test]
fn transfer_refuses_proposals_while_in_progress() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.drop_if(|m| m.body == MessageBody::TimeoutNow);
    net.act(1, |r| r.transfer_leader(n(2))).unwrap();
    assert_eq!(net.act(1, |r| r.propose(cmd(1))), Err(RaftError::TransferInProgress));
    assert_eq!(net.conf_change(1, add_learner(4)), Err(RaftError::TransferInProgress));
    net.deliver();

    let election = net.peer(1).cfg.election_ticks as usize;
    for _ in 0..election {
        net.tick(1, 1);
        net.deliver();
    }
    assert_eq!(net.raft(1).role(), Role::Leader);
    assert!(net.act(1, |r| r.propose(cmd(1))).is_ok(), "the abandoned transfer still blocks proposals");
}

/// Transfer to a lagging follower: the leader first brings it up to date, and sends `TimeoutNow`
/// only once the target has acknowledged the leader's last entry.
#[test]
fn transfer_to_lagging_follower_first_catches_it_up() {
    let mut net = Network::new(&[1, 2, 3]);
    net.isolate(3);
    net.elect(1);
    for i in 0..5 {
        net.propose(1, cmd(i));
    }
    net.deliver();
    net.heal();
    let last = net.raft(1).last_index();
    assert!(net.raft(3).last_index() < last);

    let mark = net.delivered.len();
    net.act(1, |r| r.transfer_leader(n(3))).unwrap();
    assert_eq!(net.queued(|m| m.body == MessageBody::TimeoutNow), 0, "the target is behind");
    net.tick(1, net.peer(1).cfg.heartbeat_ticks as usize);
    net.deliver();

    assert_eq!(net.raft(3).role(), Role::Leader);
    let position = |which: &dyn Fn(&Message) -> bool| net.delivered[mark..].iter().position(which);
    let caught_up = position(&|m| m.from == n(3) && m.body == append_ack(3, 1, 2, last.0).body);
    let timeout_now = position(&|m| m.body == MessageBody::TimeoutNow);
    assert!(caught_up.is_some() && timeout_now.is_some());
    assert!(caught_up < timeout_now, "TimeoutNow was sent before the target caught up");
    assert_eq!(net.commands(3).len(), 5);
}

/// Transfer to a follower whose appends were lost during a brief partition (it is in
/// `Replicate`, so the leader believes them in flight): the leader must still catch it up and
/// complete the transfer within the election timeout it allows itself.
#[test]
fn transfer_to_follower_that_lost_appends_catches_it_up() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    net.drop_if(|m| m.to == n(3) && matches!(m.body, MessageBody::Append { .. }));
    for i in 0..3 {
        net.propose(1, cmd(i));
    }
    net.deliver();
    net.heal();
    net.act(1, |r| r.transfer_leader(n(3))).unwrap();
    let election = net.peer(1).cfg.election_ticks as usize;
    for _ in 0..election - 1 {
        net.tick(1, 1);
        net.deliver();
    }
    assert_eq!(
        net.raft(3).role(),
        Role::Leader,
        "the transfer did not complete: {}",
        net.raft(1).progress_summary()
    );
    assert_eq!(net.commands(3).len(), 3);
}

// ================================================================ snapshots and compaction

/// `compact` drops the log up to the applied index it snapshots; it refuses indexes already
/// compacted or not yet applied; a node restarted from the compacted store is intact.
#[test]
fn snapshot_log_compaction_drops_entries() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    for i in 0..5 {
        net.propose(1, cmd(i));
    }
    net.deliver();
    let applied = net.peer(1).app.applied;
    assert_eq!(applied, LogIndex(7));
    let meta = net.compact(1);
    assert_eq!((meta.index, meta.term, &meta.membership), (applied, Term(2), &voters(&[1, 2, 3])));
    let r = net.raft(1);
    assert_eq!(r.snapshot_index(), applied);
    assert!((1..=applied.0).all(|i| r.entry(LogIndex(i)).is_none()), "compacted entries are still there");
    assert_eq!(r.log_term(applied), Some(Term(2)), "the snapshot's term stays known");
    assert_eq!(r.membership(), &voters(&[1, 2, 3]));
    assert!(net.peer(1).store.entries.is_empty());

    let again = net.act(1, |r| r.compact(applied, Vec::new()));
    assert_eq!(again, Err(RaftError::Compacted { index: applied }));
    let index = net.propose(1, cmd(5));
    let early = net.act(1, |r| r.compact(index, Vec::new()));
    assert_eq!(early, Err(RaftError::Compacted { index }), "compacted beyond the applied index");

    net.deliver();
    net.restart(1);
    let r = net.raft(1);
    assert_eq!((r.snapshot_index(), r.last_index(), r.commit_index()), (applied, index, index));
}

/// A host that reads snapshot data at a later committed index than its compaction point
/// (`Config::host_snapshot_data`) labels it with `snapshot_meta_at`: the term and membership as
/// of that index; nothing below the compaction point or past the commit.
#[test]
fn snapshot_meta_at_describes_later_committed_indexes() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    for i in 0..3 {
        net.propose(1, cmd(i));
    }
    net.deliver();
    let meta = net.compact(1);
    let change = net.act(1, |r| r.propose_conf_change(add_learner(4))).unwrap();
    net.deliver();
    let uncommitted = net.propose(1, cmd(9));
    let r = net.raft(1);
    assert_eq!(r.snapshot_meta_at(meta.index), Some(meta.clone()));
    let at_change = r.snapshot_meta_at(change).expect("a committed index after the compaction");
    assert_eq!((at_change.index, at_change.term), (change, Term(2)));
    assert_eq!(&at_change.membership, r.membership());
    assert_ne!(at_change.membership, meta.membership, "the learner is in it");
    assert_eq!(r.snapshot_meta_at(LogIndex(meta.index.0 - 1)), None, "compacted");
    assert_eq!(r.snapshot_meta_at(uncommitted), None, "not committed");
}

/// A follower that needs compacted entries receives `InstallSnapshot`, installs it (it comes out
/// in `Ready::snapshot`), and then continues with the entries after it.
#[test]
fn snapshot_lagging_follower_installs_snapshot_then_continues_with_entries() {
    let mut net = Network::new(&[1, 2, 3]);
    net.isolate(3);
    net.elect(1);
    for i in 0..5 {
        net.propose(1, cmd(i));
    }
    net.deliver();
    let meta = net.compact(1);
    net.propose(1, cmd(5));
    net.propose(1, cmd(6));
    net.deliver();

    net.heal();
    let mark = net.delivered.len();
    net.tick(1, net.peer(1).cfg.heartbeat_ticks as usize);
    net.deliver();
    assert_eq!(
        net.delivered_since(mark, |m| m.to == n(3) && matches!(m.body, MessageBody::InstallSnapshot { .. })),
        1
    );
    assert_eq!(net.peer(3).installed, vec![meta.clone()]);
    assert_eq!(net.raft(3).snapshot_index(), meta.index);
    assert_eq!(net.commands(3), net.commands(1), "n3's state machine");
    assert_eq!(net.commands(3).len(), 7);
    assert_eq!(net.raft(3).commit_index(), net.raft(1).commit_index());
    for i in meta.index.next().0..=net.raft(1).last_index().0 {
        assert_eq!(net.raft(3).entry(LogIndex(i)), net.raft(1).entry(LogIndex(i)), "entry {i}");
    }
}

/// An `InstallSnapshot` that is lost is sent again: the leader gives up waiting for its
/// acknowledgement after two election timeouts and probes the follower afresh.
#[test]
fn snapshot_lost_install_snapshot_is_sent_again() {
    let mut net = Network::new(&[1, 2, 3]);
    net.isolate(3);
    net.elect(1);
    for i in 0..5 {
        net.propose(1, cmd(i));
    }
    net.deliver();
    let meta = net.compact(1);
    net.propose(1, cmd(5));
    net.deliver();
    net.heal();
    net.drop_once(|m| matches!(m.body, MessageBody::InstallSnapshot { .. }));
    net.tick_all(1);
    assert!(net.peer(3).installed.is_empty());
    net.tick_all(3 * net.peer(1).cfg.election_ticks as usize);
    assert_eq!(net.peer(3).installed, vec![meta]);
    assert_eq!(net.commands(3), net.commands(1));
}

// ================================================================ ReadIndex and leases (§6.4)

/// A ReadIndex read on the leader completes only once a quorum has acknowledged a heartbeat sent
/// after the read arrived, at the commit index the leader had then.
#[test]
fn read_index_on_leader_completes_after_quorum_heartbeat_ack() {
    let mut net = Network::new(&[1, 2, 3, 4, 5]);
    net.elect(1);
    let commit = net.raft(1).commit_index();
    net.hold_if(|m| m.from == n(1));
    net.read(1, 7, ReadMode::ReadIndex).unwrap();
    net.deliver();
    assert!(net.peer(1).read_states.is_empty(), "read confirmed without any acknowledgement");

    net.deliver_held(|m| m.to == n(2) && matches!(m.body, MessageBody::Heartbeat { .. }));
    net.deliver();
    assert!(net.peer(1).read_states.is_empty(), "two of five is not a quorum");
    net.deliver_held(|m| m.to == n(3) && matches!(m.body, MessageBody::Heartbeat { .. }));
    net.deliver();
    assert_eq!(net.peer(1).read_states, vec![ReadState { ctx: 7, index: commit }]);
}

/// A read on a follower is forwarded to the leader and completes, after the leader's heartbeat
/// round, with the leader's commit index. A follower that knows no leader refuses.
#[test]
fn read_index_forwarded_from_follower_completes_with_leader_commit() {
    let mut net = Network::new(&[1, 2, 3]);
    assert_eq!(net.read(2, 8, ReadMode::ReadIndex), Err(RaftError::NotLeader { leader_hint: None }));
    net.elect(1);
    let commit = net.raft(1).commit_index();
    let mark = net.delivered.len();
    net.read(2, 9, ReadMode::ReadIndex).unwrap();
    net.deliver();
    assert_eq!(net.peer(2).read_states, vec![ReadState { ctx: 9, index: commit }]);
    let order: Vec<&str> = net.delivered[mark..]
        .iter()
        .map(|m| m.body.kind())
        .filter(|k| ["ReadIndex", "HeartbeatResponse", "ReadIndexResponse"].contains(k))
        .collect();
    assert_eq!(order.first(), Some(&"ReadIndex"));
    assert_eq!(order.last(), Some(&"ReadIndexResponse"));
    assert!(order.contains(&"HeartbeatResponse"), "answered without confirming leadership: {order:?}");
}

/// A new leader does not know the commit index until an entry of its own term commits, so it
/// holds reads until then; they then complete at an index at least that entry's.
#[test]
fn read_index_waits_until_leader_commits_in_its_term() {
    let mut net = Network::new(&[1, 2, 3]);
    net.hold_if(|m| m.to == n(1) && matches!(m.body, MessageBody::AppendResponse { .. }));
    net.elect(1);
    let own_entry = net.raft(1).last_index();
    assert!(net.raft(1).commit_index() < own_entry);
    net.read(1, 5, ReadMode::ReadIndex).unwrap();
    net.deliver();
    assert!(net.peer(1).read_states.is_empty());
    assert_eq!(net.queued(|m| matches!(m.body, MessageBody::Heartbeat { .. })), 0);

    net.release();
    net.deliver();
    assert_eq!(net.peer(1).read_states, vec![ReadState { ctx: 5, index: own_entry }]);
}

/// Lease reads are served without a round trip while the lease holds — for
/// `election_ticks - lease_drift_ticks - 2` ticks after the start of the last heartbeat round a
/// quorum acknowledged — and not afterwards, when they fall back to ReadIndex.
#[test]
fn lease_read_served_without_round_trip_only_while_lease_holds() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let cfg = net.peer(1).cfg.clone();
    let lease_ticks = (cfg.election_ticks - cfg.lease_drift_ticks - 2) as usize;
    assert_eq!(lease_ticks as u64, cfg.lease_ticks());
    assert!(!net.raft(1).lease_valid(), "no heartbeat round acknowledged yet");
    // A heartbeat round starts on this tick and a quorum acknowledges it.
    net.tick(1, cfg.heartbeat_ticks as usize);
    net.deliver();
    assert!(net.raft(1).lease_valid());
    let commit = net.raft(1).commit_index();
    net.read(1, 1, ReadMode::Lease).unwrap();
    assert_eq!(net.peer(1).read_states, vec![ReadState { ctx: 1, index: commit }]);
    assert!(net.queue.is_empty(), "a lease read sent {:?}", net.queue);

    // No acknowledgement from now on.
    net.isolate(2);
    net.isolate(3);
    net.tick(1, lease_ticks - 1);
    assert!(net.raft(1).lease_valid(), "the lease ended early");
    net.tick(1, 1);
    assert!(!net.raft(1).lease_valid(), "the lease outlived election_ticks - lease_drift_ticks - 2");
    net.deliver();
    net.read(1, 2, ReadMode::Lease).unwrap();
    assert_eq!(net.peer(1).read_states.len(), 1, "served a lease read on an expired lease");
    assert!(net.queued(|m| matches!(m.body, MessageBody::Heartbeat { .. })) > 0, "no ReadIndex fallback");
    net.heal();
    net.deliver();
    assert_eq!(net.peer(1).read_states.last(), Some(&ReadState { ctx: 2, index: commit }));
}

/// The same lease scenario has teeth: with the planted `LeaseNoDrift` bug the lease outlives
/// the drift margin.
#[test]
fn lease_read_catches_planted_lease_no_drift() {
    let mut net = Network::with_config(&[1, 2, 3], |c| c.planted_bug = Some(PlantedBug::LeaseNoDrift));
    net.elect(1);
    let cfg = net.peer(1).cfg.clone();
    net.tick(1, cfg.heartbeat_ticks as usize);
    net.deliver();
    net.isolate(2);
    net.isolate(3);
    net.tick(1, (cfg.election_ticks - cfg.lease_drift_ticks - 2) as usize);
    assert!(net.raft(1).lease_valid());
}

/// Once the leader has sent `TimeoutNow`, the target may be elected before the followers'
/// stickiness expires, so the leader's lease proves nothing: it is off for the rest of the term,
/// even if the transfer is abandoned. Reads then go through ReadIndex.
#[test]
fn lease_is_off_after_leader_sends_timeout_now() {
    let mut net = Network::new(&[1, 2, 3]);
    net.elect(1);
    let cfg = net.peer(1).cfg.clone();
    net.tick(1, cfg.heartbeat_ticks as usize);
    net.deliver();
    assert!(net.raft(1).lease_valid());

    net.drop_if(|m| m.body == MessageBody::TimeoutNow);
    net.act(1, |r| r.transfer_leader(n(2))).unwrap();
    assert!(!net.raft(1).lease_valid());
    net.read(1, 1, ReadMode::Lease).unwrap();
    assert!(net.peer(1).read_states.is_empty(), "served from the lease after TimeoutNow");
    net.deliver();
    assert_eq!(net.peer(1).read_states.len(), 1, "the ReadIndex fallback completes");

    for _ in 0..2 * cfg.election_ticks {
        net.tick(1, 1);
        net.deliver();
    }
    let r = net.raft(1);
    assert_eq!(r.role(), Role::Leader);
    assert!(net.act(1, |r| r.propose(cmd(1))).is_ok(), "the transfer was abandoned");
    assert!(!net.raft(1).lease_valid(), "the lease came back in the term TimeoutNow was sent in");
}

// ================================================================ bad input

/// A fresh follower of {1,2,3} that must refuse `m` with `expected`, changing nothing.
fn assert_refused(m: Message, expected: InvalidMessage) {
    let mut r = bootstrap(1, &voters(&[1, 2, 3]), defaults);
    flush(&mut r);
    let before = r.status();
    assert_eq!(r.step(m.clone()), Err(RaftError::InvalidMessage(expected)), "{m:?}");
    assert!(!r.has_ready(), "a refused message produced work");
    let after = r.status();
    assert_eq!(
        (after.term, after.vote, after.last_index, after.commit),
        (before.term, before.vote, before.last_index, before.commit)
    );
}

#[test]
fn bad_input_non_contiguous_entries_are_rejected() {
    assert_refused(
        append(2, 1, 2, (1, 1), &[(2, 2), (4, 2)], 1),
        InvalidMessage::NonContiguousEntries { position: 1, got: LogIndex(4), expected: LogIndex(3) },
    );
    assert_refused(
        append(2, 1, 2, (1, 1), &[(3, 2)], 1),
        InvalidMessage::NonContiguousEntries { position: 0, got: LogIndex(3), expected: LogIndex(2) },
    );
}

#[test]
fn bad_input_entry_term_above_message_term_is_rejected() {
    assert_refused(
        append(2, 1, 2, (1, 1), &[(2, 2), (3, 3)], 1),
        InvalidMessage::EntryTermAboveMessage { index: LogIndex(3), entry_term: Term(3), term: Term(2) },
    );
}

#[test]
fn bad_input_wrong_recipient_is_rejected() {
    assert_refused(append(2, 9, 2, (1, 1), &[], 1), InvalidMessage::WrongRecipient { to: n(9), me: n(1) });
}

#[test]
fn bad_input_zero_term_is_rejected() {
    assert_refused(append(2, 1, 0, (1, 1), &[], 1), InvalidMessage::ZeroTerm { kind: "Append" });
    assert_refused(vote_request(2, 1, 0, (0, 0)), InvalidMessage::ZeroTerm { kind: "Vote" });
}

/// The remaining validation rules, one malformed message each.
#[test]
fn bad_input_other_malformed_messages_are_rejected() {
    assert_refused(append(0, 1, 2, (1, 1), &[], 1), InvalidMessage::BadSender { from: n(0) });
    assert_refused(append(1, 1, 2, (1, 1), &[], 1), InvalidMessage::BadSender { from: n(1) });
    assert_refused(
        append(2, 1, 3, (1, 1), &[(2, 3), (3, 2)], 1),
        InvalidMessage::DecreasingEntryTerms { index: LogIndex(3) },
    );
    assert_refused(
        append(2, 1, 3, (1, 3), &[(2, 2)], 1),
        InvalidMessage::PrevTermAboveEntries { prev_term: Term(3), term: Term(2) },
    );
    assert_refused(
        append(2, 1, 2, (u64::MAX, 1), &[], 1),
        InvalidMessage::IndexOutOfRange { what: "prev_index", value: u64::MAX },
    );
    assert_refused(
        append(2, 1, 2, (LOG_INDEX_MAX, 1), &[(LOG_INDEX_MAX + 1, 2)], 1),
        InvalidMessage::IndexOutOfRange { what: "entries end", value: LOG_INDEX_MAX },
    );
    assert_refused(
        append(2, 1, u64::MAX, (1, 1), &[], 1),
        InvalidMessage::IndexOutOfRange { what: "term", value: u64::MAX },
    );
    assert_refused(
        vote_request(2, 1, 2, (1, 3)),
        InvalidMessage::IndexOutOfRange { what: "last_term", value: 3 },
    );
    let no_voters =
        Entry { index: LogIndex(2), term: Term(2), payload: EntryPayload::Membership(Membership::default()) };
    let body = MessageBody::Append {
        prev_index: LogIndex(1),
        prev_term: Term(1),
        entries: vec![no_voters],
        commit: LogIndex(1),
    };
    assert_refused(
        msg(2, 1, 2, body),
        InvalidMessage::BadMembershipEntry { index: LogIndex(2), reason: "no voters".into() },
    );
    let snapshot = Snapshot {
        meta: SnapshotMeta { index: LogIndex(0), term: Term(1), membership: voters(&[1, 2, 3]) },
        data: Vec::new(),
    };
    assert_refused(
        msg(2, 1, 2, MessageBody::InstallSnapshot { snapshot }),
        InvalidMessage::BadSnapshot { reason: "snapshot at index 0".into() },
    );
}

/// A leader told by a follower that it rejected an index beyond the leader's log (a corrupt or
/// forged but well-formed `AppendResponse`) must not panic.
#[test]
fn bad_input_rejection_beyond_leader_log_is_harmless() {
    let mut r = leader(1, &voters(&[1, 2, 3]), |_| {});
    r.propose(cmd(1)).unwrap();
    flush(&mut r);
    let last = r.last_index().0;
    r.step(append_ack(2, 1, 2, last)).unwrap();
    flush(&mut r);
    let forged = MessageBody::AppendResponse {
        reject: true,
        index: LogIndex(last + 100),
        hint_index: LogIndex(last + 50),
        hint_term: None,
    };
    let _ = r.step(msg(2, 1, 2, forged));
    flush(&mut r);
    r.check_invariants();
}

// ---------------------------------------------------------------- the property

/// Property-test settings: `cases` cases drawn from a fixed seed, so that every run (and CI) is
/// deterministic; the `PROPTEST_CASES` and `PROPTEST_RNG_SEED` variables override both.
fn property_config(cases: u32) -> ProptestConfig {
    let env = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() { env.cases } else { cases },
        rng_seed: match env.rng_seed {
            RngSeed::Random => RngSeed::Fixed(0xF107_111A),
            seed => seed,
        },
        failure_persistence: None,
        ..env
    }
}

/// A number chosen relative to the node's state (its term, its last index), so that many
/// generated messages are plausible enough to get past validation, or absolute and extreme.
#[derive(Clone, Debug)]
enum Num {
    Rel(i8),
    Abs(u64),
}

impl Num {
    fn at(&self, base: u64) -> u64 {
        match *self {
            Num::Rel(delta) => base.saturating_add_signed(i64::from(delta)),
            Num::Abs(value) => value,
        }
    }
}

fn arb_num() -> impl Strategy<Value = Num> {
    prop_oneof![
        6 => (-3i8..=3).prop_map(Num::Rel),
        1 => prop_oneof![
            Just(0),
            Just(LOG_INDEX_MAX - 1),
            Just(LOG_INDEX_MAX),
            Just(LOG_INDEX_MAX + 1),
            Just(u64::MAX),
            any::<u64>(),
        ]
        .prop_map(Num::Abs),
    ]
}

/// Memberships over nodes 0..=6: usually valid, sometimes not (no voters, node 0, overlaps).
fn arb_membership() -> impl Strategy<Value = Membership> {
    let ids = || prop::collection::btree_set((0u64..=6).prop_map(NodeId), 0..4);
    (ids(), ids(), ids(), ids(), any::<bool>()).prop_map(|(voters, outgoing, learners, next, tidy)| {
        if !tidy {
            return Membership { voters, voters_outgoing: outgoing, learners, learners_next: next };
        }
        let drop_zero =
            |s: BTreeSet<NodeId>| -> BTreeSet<NodeId> { s.into_iter().filter(|id| id.0 != 0).collect() };
        let mut voters = drop_zero(voters);
        if voters.is_empty() {
            voters.insert(n(1));
        }
        let outgoing = drop_zero(outgoing);
        let learners: BTreeSet<NodeId> = drop_zero(learners)
            .into_iter()
            .filter(|id| !voters.contains(id) && !outgoing.contains(id))
            .collect();
        let learners_next = if outgoing.is_empty() {
            BTreeSet::new()
        } else {
            drop_zero(next).intersection(&outgoing).copied().collect()
        };
        Membership { voters, voters_outgoing: outgoing, learners, learners_next }
    })
}

fn arb_payload() -> impl Strategy<Value = EntryPayload> {
    prop_oneof![
        2 => Just(EntryPayload::Empty),
        3 => prop::collection::vec(any::<u8>(), 0..8).prop_map(EntryPayload::Normal),
        1 => arb_membership().prop_map(EntryPayload::Membership),
    ]
}

/// A message, before it is resolved against the node it is sent to.
#[derive(Clone, Debug)]
struct Template {
    from: u64,
    to_me: bool,
    term: Num,
    kind: u8,
    /// An index (last_index, prev_index, snapshot index, …).
    a: Num,
    /// A term (last_term, prev_term, hint_term, snapshot term).
    b: Num,
    /// A second index (commit, hint_index).
    c: Num,
    flag: bool,
    flag2: bool,
    data: u64,
    entries: Vec<(Num, Num, EntryPayload)>,
    membership: Membership,
    /// Make Append entries contiguous with non-decreasing terms, so they reach the log code.
    well_formed: bool,
}

impl Template {
    fn resolve(&self, r: &RawNode) -> Message {
        let (term, last) = (r.term().0, r.last_index().0);
        let msg_term = Term(self.term.at(term));
        let index = |x: &Num| LogIndex(x.at(last));
        let term_of = |x: &Num| Term(x.at(term));
        let body = match self.kind % 12 {
            0 => MessageBody::PreVote { last_index: index(&self.a), last_term: term_of(&self.b) },
            1 => MessageBody::PreVoteResponse { reject: self.flag },
            2 => MessageBody::Vote {
                last_index: index(&self.a),
                last_term: term_of(&self.b),
                transfer: self.flag,
            },
            3 => MessageBody::VoteResponse { reject: self.flag },
            4 => {
                let prev_index = index(&self.a);
                let mut prev_term = term_of(&self.b);
                let mut entries: Vec<Entry> = self
                    .entries
                    .iter()
                    .map(|(i, t, payload)| Entry {
                        index: index(i),
                        term: term_of(t),
                        payload: payload.clone(),
                    })
                    .collect();
                if self.well_formed {
                    prev_term = prev_term.min(msg_term);
                    let mut floor = prev_term;
                    for (k, e) in entries.iter_mut().enumerate() {
                        e.index = prev_index.plus(k as u64 + 1);
                        e.term = e.term.clamp(floor, msg_term);
                        floor = e.term;
                    }
                }
                MessageBody::Append { prev_index, prev_term, entries, commit: index(&self.c) }
            }
            5 => MessageBody::AppendResponse {
                reject: self.flag,
                index: index(&self.a),
                hint_index: index(&self.c),
                hint_term: self.flag2.then(|| term_of(&self.b)),
            },
            6 => MessageBody::Heartbeat { commit: index(&self.a), read_seq: self.data },
            7 => MessageBody::HeartbeatResponse { read_seq: self.data },
            8 => {
                let meta = SnapshotMeta {
                    index: index(&self.a),
                    term: term_of(&self.b),
                    membership: self.membership.clone(),
                };
                MessageBody::InstallSnapshot {
                    snapshot: Snapshot { meta, data: self.data.to_le_bytes().to_vec() },
                }
            }
            9 => MessageBody::TimeoutNow,
            10 => MessageBody::ReadIndex { ctx: self.data, lease: self.flag },
            _ => MessageBody::ReadIndexResponse { ctx: self.data, index: index(&self.a) },
        };
        let to = if self.to_me { r.id() } else { NodeId(self.data % 8) };
        Message { from: NodeId(self.from), to, term: msg_term, body }
    }
}

fn arb_template() -> impl Strategy<Value = Template> {
    let from = prop_oneof![8 => 1u64..=5, 1 => Just(0u64), 1 => any::<u64>()];
    let entries = prop::collection::vec((arb_num(), arb_num(), arb_payload()), 0..5);
    (
        (from, prop::bool::weighted(0.9), arb_num(), 0u8..12),
        (arb_num(), arb_num(), arb_num()),
        (any::<bool>(), any::<bool>(), any::<u64>()),
        (entries, arb_membership(), prop::bool::weighted(0.7)),
    )
        .prop_map(
            |(
                (from, to_me, term, kind),
                (a, b, c),
                (flag, flag2, data),
                (entries, membership, well_formed),
            )| {
                Template {
                    from,
                    to_me,
                    term,
                    kind,
                    a,
                    b,
                    c,
                    flag,
                    flag2,
                    data,
                    entries,
                    membership,
                    well_formed,
                }
            },
        )
}

/// What the property does to the node: mostly messages, with some host inputs in between so the
/// node moves between states.
#[derive(Clone, Debug)]
enum Action {
    Step(Box<Template>),
    Tick,
    Propose,
    Read(bool),
    Campaign,
    Transfer(u64),
    Compact,
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        12 => arb_template().prop_map(|t| Action::Step(Box::new(t))),
        2 => Just(Action::Tick),
        1 => Just(Action::Propose),
        1 => any::<bool>().prop_map(Action::Read),
        1 => Just(Action::Campaign),
        1 => (0u64..=4).prop_map(Action::Transfer),
        1 => Just(Action::Compact),
    ]
}

/// Node 1 in one of several roles, each with some log.
fn node_in_role(role: u8) -> RawNode {
    let m = voters(&[1, 2, 3]);
    match role % 8 {
        0 => bootstrap(1, &m, defaults),
        1 => restored(1, &m, &[1, 2, 2, 3, 3], 3, 4, defaults),
        2 => {
            let mut r = bootstrap(1, &m, defaults);
            r.campaign_now();
            r
        }
        3 => {
            let mut r = restored(1, &m, &[2, 2], 2, 2, plain);
            r.campaign_now();
            r
        }
        4 | 5 => {
            // A leader with a pipelined follower (n2), a probed one (n3), and maybe a snapshot.
            let mut r = leader(1, &m, |_| {});
            for i in 0..4 {
                r.propose(cmd(i)).unwrap();
            }
            flush(&mut r);
            let last = r.last_index().0;
            r.step(append_ack(2, 1, r.term().0, last)).unwrap();
            flush(&mut r);
            if role % 8 == 5 {
                r.compact(r.status().applied.prev(), b"state".to_vec()).unwrap();
            }
            r
        }
        6 => bootstrap(1, &Membership { learners: set(&[1]), ..voters(&[2, 3, 4]) }, defaults),
        _ => {
            let joint = m.apply(&ConfChange::Change(vec![
                (n(4), ConfChangeKind::AddVoter),
                (n(3), ConfChangeKind::Remove),
            ]));
            leader(1, &joint.unwrap(), |_| {})
        }
    }
}

proptest! {
    #![proptest_config(property_config(256))]

    /// Whatever a peer sends, `step` returns `Ok` or `Err(InvalidMessage)` — never panics — and
    /// the node's invariants hold afterwards; a refused message leaves no trace.
    #[test]
    fn bad_input_random_messages_never_panic_and_keep_invariants(
        role in 0u8..8,
        actions in prop::collection::vec(arb_action(), 1..12),
    ) {
        let mut r = node_in_role(role);
        flush(&mut r);
        for action in &actions {
            match action {
                Action::Step(template) => {
                    let m = template.resolve(&r);
                    let before = r.status();
                    match r.step(m.clone()) {
                        Ok(()) => {}
                        Err(RaftError::InvalidMessage(_)) => {
                            let after = r.status();
                            prop_assert!(!r.has_ready(), "refused {:?} but produced work", m);
                            prop_assert_eq!(
                                (after.term, after.vote, after.role, after.commit, after.last_index),
                                (before.term, before.vote, before.role, before.commit, before.last_index)
                            );
                        }
                        Err(e) => prop_assert!(false, "step returned {:?} for {:?}", e, m),
                    }
                }
                Action::Tick => r.tick(),
                Action::Propose => {
                    let _ = r.propose(cmd(0));
                }
                Action::Read(lease) => {
                    let mode = if *lease { ReadMode::Lease } else { ReadMode::ReadIndex };
                    let _ = r.read_index(0, mode);
                }
                Action::Campaign => r.campaign_now(),
                Action::Transfer(to) => {
                    let _ = r.transfer_leader(NodeId(*to));
                }
                Action::Compact => {
                    let _ = r.compact(r.status().applied, Vec::new());
                }
            }
            r.check_invariants();
            flush(&mut r);
            r.check_invariants();
        }
    }
}

// ---------------------------------------------------------------- random schedules

/// One step of a random schedule on a five-node network (voters 1–3 at first; 4 and 5 join
/// through membership changes).
#[derive(Clone, Debug)]
enum Op {
    Ticks(u8),
    Isolate(u64),
    Heal,
    Propose(u64),
    Campaign(u64),
    Restart(u64),
    Transfer(u64, u64),
    Compact(u64),
    Change(u64, u8),
    Read(u64, bool),
}

fn arb_op() -> impl Strategy<Value = Op> {
    let id = || 1u64..=5;
    prop_oneof![
        6 => (1u8..=12).prop_map(Op::Ticks),
        2 => id().prop_map(Op::Isolate),
        2 => Just(Op::Heal),
        4 => id().prop_map(Op::Propose),
        2 => id().prop_map(Op::Campaign),
        1 => id().prop_map(Op::Restart),
        1 => (id(), id()).prop_map(|(from, to)| Op::Transfer(from, to)),
        1 => id().prop_map(Op::Compact),
        1 => (id(), 0u8..3).prop_map(|(target, kind)| Op::Change(target, kind)),
        1 => (id(), any::<bool>()).prop_map(|(at, lease)| Op::Read(at, lease)),
    ]
}

proptest! {
    #![proptest_config(property_config(64))]

    /// Partitions, crashes, elections, transfers, compactions and membership changes in random
    /// order never break what the network checks on every step: Election Safety, State Machine
    /// Safety, linearizable ReadIndex and lease reads, durable state before every grant and
    /// acknowledgement, well-formed messages, and the core's invariants. Once the faults heal, the group settles on one leader, and a new
    /// command reaches every member's state machine.
    #[test]
    fn random_faults_keep_safety_and_the_healed_group_makes_progress(ops in prop::collection::vec(arb_op(), 1..60)) {
        let mut net = Network::new(&[1, 2, 3]);
        net.add_joiner(4, defaults);
        net.add_joiner(5, defaults);
        let (mut next_command, mut next_read) = (0, 0);
        for op in &ops {
            match *op {
                Op::Ticks(rounds) => net.tick_all(usize::from(rounds)),
                Op::Isolate(id) => net.isolate(id),
                Op::Heal => net.heal(),
                Op::Propose(id) => {
                    // To the node that believes it leads, if any (there may be several).
                    let to = (1..=5).find(|&i| net.raft(i).role() == Role::Leader).unwrap_or(id);
                    for _ in 0..3 {
                        next_command += 1;
                        let _ = net.act(to, |r| r.propose(cmd(next_command)));
                    }
                }
                Op::Campaign(id) => {
                    // Only while no node leads: a forced campaign next to a live leader breaks
                    // its lease (check_quorum_campaigning_follower_still_refuses_to_depose_a_recent_leader).
                    if (1..=5).all(|id| net.raft(id).role() != Role::Leader) {
                        net.act(id, |r| r.campaign_now());
                    }
                }
                Op::Restart(id) => net.restart(id),
                Op::Transfer(from, to) => {
                    let _ = net.act(from, |r| r.transfer_leader(n(to)));
                }
                Op::Compact(id) => {
                    if net.peer(id).app.applied > net.raft(id).snapshot_index() {
                        net.compact(id);
                    }
                }
                Op::Change(target, kind) => {
                    let kind = [ConfChangeKind::AddVoter, ConfChangeKind::AddLearner, ConfChangeKind::Remove][usize::from(kind)];
                    let leader = (1..=5).find(|&id| net.raft(id).role() == Role::Leader);
                    if let Some(leader) = leader {
                        let _ = net.conf_change(leader, ConfChange::Change(vec![(n(target), kind)]));
                    }
                }
                Op::Read(at, lease) => {
                    let mode = if lease { ReadMode::Lease } else { ReadMode::ReadIndex };
                    next_read += 1;
                    let _ = net.read(at, next_read, mode);
                }
            }
            net.deliver();
        }

        // Once healed, a client that keeps submitting one command through whichever node leads
        // (a new leader may drop an uncommitted copy) gets it applied by every member.
        net.heal();
        let is_final = |c: &Vec<u8>| c == b"final";
        for rounds in 0.. {
            prop_assert!(rounds < 2000, "the healed group made no progress in 2000 rounds");
            net.tick_all(1);
            let leaders: Vec<u64> = (1..=5).filter(|&id| net.raft(id).role() == Role::Leader).collect();
            let [leader] = leaders[..] else { continue };
            let r = net.raft(leader);
            if r.membership().members().iter().all(|id| net.commands(id.0).iter().any(is_final)) {
                break;
            }
            let in_log = (r.snapshot_index().next().0..=r.last_index().0).any(|i| {
                r.entry(LogIndex(i)).is_some_and(|e| e.payload == EntryPayload::Normal(b"final".to_vec()))
            });
            if !in_log && !net.commands(leader).iter().any(is_final) {
                let _ = net.act(leader, |r| r.propose(b"final".to_vec()));
            }
        }
    }
}
