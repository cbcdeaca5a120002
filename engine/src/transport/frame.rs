//! The wire frame: how one message between two nodes is laid out on a QUIC stream.
//!
//! Byte format (all integers little-endian):
//!
//! ```text
//! offset size  field
//! 0      3     magic  b"FLT"
//! 3      1     version (FRAME_VERSION = 1)
//! 4      1     kind: 1 RaftBatch, 2 Hello, 3 Request, 4 Response
//! 5      4     payload length in bytes (u32), at most FRAME_BYTES_MAX
//! 9      len   payload: the postcard encoding of the kind's type
//! ```
//!
//! Frames follow each other back to back on a stream; a clean end of stream is only allowed at a
//! frame boundary.
//!
//! Invariants:
//! - Decoding never panics and never trusts a length: the declared payload length is checked
//!   against [`FRAME_BYTES_MAX`] *before* anything is allocated, and when reading from a stream
//!   the buffer grows only with bytes that actually arrived, so a peer that declares 64 MiB and
//!   sends nothing costs nothing.
//! - A payload must be consumed exactly by its postcard decoding; trailing bytes are an error,
//!   so one byte sequence has one meaning.
//! - The version byte is checked on every frame. A future version-2 peer is refused with
//!   [`FrameError::UnsupportedVersion`] rather than misread.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::wire::RaftBatch;
use crate::raft::NodeId;

/// The first three bytes of every frame.
pub const FRAME_MAGIC: [u8; 3] = *b"FLT";
/// The only frame version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Magic, version, kind and length.
pub const FRAME_HEADER_BYTES: usize = 9;
/// The largest payload a frame may declare. Big enough for a chunk of a snapshot or a large
/// append batch; small enough that a corrupt or hostile length cannot exhaust memory.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// When reading a frame from a stream, the buffer starts at most this big and grows only as
/// bytes arrive (see the module invariants).
const READ_BUFFER_INITIAL_BYTES: usize = 64 * 1024;

/// What a frame carries; the byte is the `kind` field of the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    RaftBatch = 1,
    Hello = 2,
    Request = 3,
    Response = 4,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<FrameKind> {
        match byte {
            1 => Some(FrameKind::RaftBatch),
            2 => Some(FrameKind::Hello),
            3 => Some(FrameKind::Request),
            4 => Some(FrameKind::Response),
            _ => None,
        }
    }
}

/// The first frame on each node's batch stream of a new connection: who is speaking, and for
/// which cluster (so two clusters sharing a CA, or a misconfigured node, never mix traffic).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node_id: NodeId,
    pub cluster_id: String,
}

/// An opaque request; `id` is echoed by the response so a confused stream is detected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(with = "crate::bytes_serde")]
    pub payload: Vec<u8>,
}

/// The answer to a [`Request`]: the handler's bytes, or why the transport could not produce
/// them (for example a response over [`FRAME_BYTES_MAX`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub result: Result<Vec<u8>, String>,
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    RaftBatch(RaftBatch),
    Hello(Hello),
    Request(Request),
    Response(Response),
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::RaftBatch(_) => FrameKind::RaftBatch,
            Frame::Hello(_) => FrameKind::Hello,
            Frame::Request(_) => FrameKind::Request,
            Frame::Response(_) => FrameKind::Response,
        }
    }
}

/// A type that travels as the payload of one frame kind.
pub trait FramePayload: Serialize + DeserializeOwned {
    const KIND: FrameKind;
}

impl FramePayload for RaftBatch {
    const KIND: FrameKind = FrameKind::RaftBatch;
}
impl FramePayload for Hello {
    const KIND: FrameKind = FrameKind::Hello;
}
impl FramePayload for Request {
    const KIND: FrameKind = FrameKind::Request;
}
impl FramePayload for Response {
    const KIND: FrameKind = FrameKind::Response;
}

/// Why bytes are not a valid frame. Every variant is the peer's (or the disk's) fault, never a
/// reason to panic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("bad frame magic {found:02x?} (expected {FRAME_MAGIC:02x?})")]
    BadMagic { found: [u8; 3] },
    #[error("unsupported frame version {found} (this node speaks {FRAME_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame truncated: the stream ended inside a frame")]
    Truncated,
    #[error("malformed frame payload: {0}")]
    Malformed(String),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The stream itself failed (connection lost, reset by the peer) while reading a frame.
    #[error("stream error while reading a frame: {0}")]
    Io(String),
}

impl FrameError {
    /// True when the bytes were bad (as opposed to the stream failing): the caller logs it as a
    /// protocol violation and counts it in `flotilla_transport_frame_errors_total`.
    pub fn is_protocol_violation(&self) -> bool {
        !matches!(self, FrameError::Io(_))
    }
}

/// Encodes `value` as one complete frame (header and payload).
pub fn encode<T: FramePayload>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + 64);
    out.extend_from_slice(&FRAME_MAGIC);
    out.push(FRAME_VERSION);
    out.push(T::KIND as u8);
    // Length placeholder, patched once the payload size is known.
    out.extend_from_slice(&[0; 4]);
    let mut out = postcard::to_extend(value, out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - FRAME_HEADER_BYTES;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge { len, max: FRAME_BYTES_MAX });
    }
    // Cannot truncate: FRAME_BYTES_MAX < u32::MAX.
    out[5..FRAME_HEADER_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Checks a frame header and returns the kind and the payload length it declares.
pub fn decode_header(header: &[u8; FRAME_HEADER_BYTES]) -> Result<(FrameKind, usize), FrameError> {
    let found = [header[0], header[1], header[2]];
    if found != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found });
    }
    if header[3] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion { found: header[3] });
    }
    let kind = FrameKind::from_byte(header[4]).ok_or(FrameError::UnknownKind(header[4]))?;
    let len = u32::from_le_bytes([header[5], header[6], header[7], header[8]]) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge { len, max: FRAME_BYTES_MAX });
    }
    Ok((kind, len))
}

fn decode_exact<T: FramePayload>(payload: &[u8]) -> Result<T, FrameError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!("{} trailing bytes after the payload", rest.len())));
    }
    Ok(value)
}

/// Decodes a payload of the given kind.
pub fn decode_payload(kind: FrameKind, payload: &[u8]) -> Result<Frame, FrameError> {
    Ok(match kind {
        FrameKind::RaftBatch => Frame::RaftBatch(decode_exact(payload)?),
        FrameKind::Hello => Frame::Hello(decode_exact(payload)?),
        FrameKind::Request => Frame::Request(decode_exact(payload)?),
        FrameKind::Response => Frame::Response(decode_exact(payload)?),
    })
}

/// Decodes the first frame in `bytes`; returns it and the number of bytes it occupied.
/// `Truncated` means `bytes` ends inside the frame (more may be coming).
pub fn decode(bytes: &[u8]) -> Result<(Frame, usize), FrameError> {
    let header: &[u8; FRAME_HEADER_BYTES] =
        bytes.get(..FRAME_HEADER_BYTES).and_then(|h| h.try_into().ok()).ok_or(FrameError::Truncated)?;
    let (kind, len) = decode_header(header)?;
    let end = FRAME_HEADER_BYTES + len;
    let payload = bytes.get(FRAME_HEADER_BYTES..end).ok_or(FrameError::Truncated)?;
    Ok((decode_payload(kind, payload)?, end))
}

/// Reads the next frame from a stream. `Ok(None)` is a clean end of stream at a frame boundary;
/// an end of stream anywhere else is [`FrameError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, FrameError> {
    read_frame_max(reader, FRAME_BYTES_MAX).await
}

/// [`read_frame`] with a tighter payload limit, for frames that are small by nature (a Hello
/// arrives before the peer has proved anything, so it gets a few hundred bytes, not 64 MiB).
pub async fn read_frame_max<R: AsyncRead + Unpin>(
    reader: &mut R,
    payload_bytes_max: usize,
) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    // Read the first byte separately so that end-of-stream before it is a clean close.
    let first = reader.read(&mut header[..1]).await.map_err(|e| FrameError::Io(e.to_string()))?;
    if first == 0 {
        return Ok(None);
    }
    read_exact_or_truncated(reader, &mut header[1..]).await?;
    let (kind, len) = decode_header(&header)?;
    if len > payload_bytes_max {
        return Err(FrameError::TooLarge { len, max: payload_bytes_max });
    }
    let mut payload = Vec::with_capacity(len.min(READ_BUFFER_INITIAL_BYTES));
    // `take` + `read_to_end` grows the buffer as data arrives instead of trusting `len`.
    let read =
        reader.take(len as u64).read_to_end(&mut payload).await.map_err(|e| FrameError::Io(e.to_string()))?;
    if read < len {
        return Err(FrameError::Truncated);
    }
    decode_payload(kind, &payload).map(Some)
}

async fn read_exact_or_truncated<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), FrameError> {
    match reader.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(FrameError::Io(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ids::RangeId;
    use crate::raft::{
        Entry, EntryPayload, LogIndex, Membership, Message, MessageBody, Snapshot, SnapshotMeta, Term,
    };
    use crate::transport::wire::{HeartbeatEntry, HeartbeatResponseEntry};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().expect("test runtime")
    }

    fn sample_batch() -> RaftBatch {
        RaftBatch {
            from: NodeId(1),
            to: NodeId(2),
            messages: vec![(
                RangeId(7),
                Message {
                    from: NodeId(1),
                    to: NodeId(2),
                    term: Term(3),
                    body: MessageBody::Append {
                        prev_index: LogIndex(4),
                        prev_term: Term(2),
                        entries: vec![Entry {
                            term: Term(3),
                            index: LogIndex(5),
                            payload: EntryPayload::Normal(b"put k v".to_vec()),
                        }],
                        commit: LogIndex(4),
                    },
                },
            )],
            heartbeats: vec![HeartbeatEntry {
                range: RangeId(9),
                term: Term(3),
                commit: LogIndex(2),
                read_seq: 11,
            }],
            heartbeat_responses: vec![],
            quiesce: vec![(RangeId(10), Term(3))],
            snapshot_chunks: vec![],
        }
    }

    #[test]
    fn header_layout_is_as_documented() {
        let bytes = encode(&Hello { node_id: NodeId(5), cluster_id: "c".into() }).expect("encode");
        assert_eq!(&bytes[..3], b"FLT");
        assert_eq!(bytes[3], FRAME_VERSION);
        assert_eq!(bytes[4], FrameKind::Hello as u8);
        let len = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
        assert_eq!(len, bytes.len() - FRAME_HEADER_BYTES);
    }

    #[test]
    fn every_kind_round_trips() {
        let frames = [
            (encode(&sample_batch()), Frame::RaftBatch(sample_batch())),
            (
                encode(&Hello { node_id: NodeId(3), cluster_id: "prod".into() }),
                Frame::Hello(Hello { node_id: NodeId(3), cluster_id: "prod".into() }),
            ),
            (
                encode(&Request { id: 9, payload: vec![1, 2, 3] }),
                Frame::Request(Request { id: 9, payload: vec![1, 2, 3] }),
            ),
            (
                encode(&Response { id: 9, result: Err("nope".into()) }),
                Frame::Response(Response { id: 9, result: Err("nope".into()) }),
            ),
        ];
        for (bytes, expected) in frames {
            let bytes = bytes.expect("encode");
            let (frame, used) = decode(&bytes).expect("decode");
            assert_eq!(used, bytes.len());
            assert_eq!(frame, expected);
        }
    }

    #[test]
    fn declared_length_over_the_limit_is_refused_before_reading_it() {
        let mut bytes = encode(&Request { id: 1, payload: vec![] }).expect("encode");
        bytes[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&bytes),
            Err(FrameError::TooLarge { len: u32::MAX as usize, max: FRAME_BYTES_MAX })
        );
        // The stream reader refuses it from the header alone, with no payload present.
        let result = runtime().block_on(read_frame(&mut &bytes[..FRAME_HEADER_BYTES]));
        assert_eq!(result, Err(FrameError::TooLarge { len: u32::MAX as usize, max: FRAME_BYTES_MAX }));
    }

    #[test]
    fn oversized_payload_is_refused_when_encoding() {
        let request = Request { id: 1, payload: vec![0; FRAME_BYTES_MAX + 1] };
        assert!(matches!(encode(&request), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn header_errors_are_typed() {
        let good = encode(&Request { id: 1, payload: vec![] }).expect("encode");
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(decode(&bad), Err(FrameError::BadMagic { .. })));
        let mut bad = good.clone();
        bad[3] = 2;
        assert_eq!(decode(&bad), Err(FrameError::UnsupportedVersion { found: 2 }));
        let mut bad = good.clone();
        bad[4] = 200;
        assert_eq!(decode(&bad), Err(FrameError::UnknownKind(200)));
        assert_eq!(decode(&good[..good.len() - 1]), Err(FrameError::Truncated));
        let mut trailing = good.clone();
        trailing.push(0);
        let len = (trailing.len() - FRAME_HEADER_BYTES) as u32;
        trailing[5..9].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(decode(&trailing), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn stream_reader_reads_back_to_back_frames_and_a_clean_end() {
        let mut stream = encode(&sample_batch()).expect("encode");
        stream.extend(encode(&Request { id: 2, payload: vec![7] }).expect("encode"));
        let rt = runtime();
        let mut reader = &stream[..];
        assert_eq!(rt.block_on(read_frame(&mut reader)), Ok(Some(Frame::RaftBatch(sample_batch()))));
        assert_eq!(
            rt.block_on(read_frame(&mut reader)),
            Ok(Some(Frame::Request(Request { id: 2, payload: vec![7] })))
        );
        assert_eq!(rt.block_on(read_frame(&mut reader)), Ok(None));
        // Ending inside the header or inside the payload is truncation, not a clean end.
        assert_eq!(rt.block_on(read_frame(&mut &stream[..4])), Err(FrameError::Truncated));
        assert_eq!(
            rt.block_on(read_frame(&mut &stream[..FRAME_HEADER_BYTES + 1])),
            Err(FrameError::Truncated)
        );
    }

    fn arb_node() -> impl Strategy<Value = NodeId> {
        (0u64..8).prop_map(NodeId)
    }

    fn arb_membership() -> impl Strategy<Value = Membership> {
        (
            proptest::collection::btree_set(arb_node(), 0..4),
            proptest::collection::btree_set(arb_node(), 0..3),
            proptest::collection::btree_set(arb_node(), 0..3),
        )
            .prop_map(|(voters, voters_outgoing, learners)| Membership {
                voters,
                voters_outgoing,
                learners,
                learners_next: Default::default(),
            })
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        let payload = prop_oneof![
            Just(EntryPayload::Empty),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(EntryPayload::Normal),
            arb_membership().prop_map(EntryPayload::Membership),
        ];
        (any::<u64>(), any::<u64>(), payload).prop_map(|(term, index, payload)| Entry {
            term: Term(term),
            index: LogIndex(index),
            payload,
        })
    }

    fn arb_body() -> impl Strategy<Value = MessageBody> {
        let index = || any::<u64>().prop_map(LogIndex);
        let term = || any::<u64>().prop_map(Term);
        prop_oneof![
            (index(), term())
                .prop_map(|(last_index, last_term)| MessageBody::PreVote { last_index, last_term }),
            any::<bool>().prop_map(|reject| MessageBody::PreVoteResponse { reject }),
            (index(), term(), any::<bool>()).prop_map(|(last_index, last_term, transfer)| {
                MessageBody::Vote { last_index, last_term, transfer }
            }),
            any::<bool>().prop_map(|reject| MessageBody::VoteResponse { reject }),
            (index(), term(), proptest::collection::vec(arb_entry(), 0..4), index()).prop_map(
                |(prev_index, prev_term, entries, commit)| MessageBody::Append {
                    prev_index,
                    prev_term,
                    entries,
                    commit
                }
            ),
            (any::<bool>(), index(), index(), proptest::option::of(term())).prop_map(
                |(reject, index, hint_index, hint_term)| MessageBody::AppendResponse {
                    reject,
                    index,
                    hint_index,
                    hint_term
                }
            ),
            (index(), any::<u64>())
                .prop_map(|(commit, read_seq)| MessageBody::Heartbeat { commit, read_seq }),
            any::<u64>().prop_map(|read_seq| MessageBody::HeartbeatResponse { read_seq }),
            (index(), term(), arb_membership(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
                |(index, term, membership, data)| MessageBody::InstallSnapshot {
                    snapshot: Snapshot { meta: SnapshotMeta { index, term, membership }, data }
                }
            ),
            Just(MessageBody::TimeoutNow),
            (any::<u64>(), any::<bool>()).prop_map(|(ctx, lease)| MessageBody::ReadIndex { ctx, lease }),
            (any::<u64>(), index()).prop_map(|(ctx, index)| MessageBody::ReadIndexResponse { ctx, index }),
        ]
    }

    fn arb_batch() -> impl Strategy<Value = RaftBatch> {
        let message = (any::<u64>(), arb_node(), arb_node(), any::<u64>(), arb_body()).prop_map(
            |(range, from, to, term, body)| (RangeId(range), Message { from, to, term: Term(term), body }),
        );
        let heartbeat = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(range, term, commit, read_seq)| HeartbeatEntry {
                range: RangeId(range),
                term: Term(term),
                commit: LogIndex(commit),
                read_seq,
            },
        );
        let heartbeat_response =
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(range, term, read_seq)| {
                HeartbeatResponseEntry { range: RangeId(range), term: Term(term), read_seq }
            });
        (
            arb_node(),
            arb_node(),
            proptest::collection::vec(message, 0..6),
            proptest::collection::vec(heartbeat, 0..6),
            proptest::collection::vec(heartbeat_response, 0..6),
            proptest::collection::vec((any::<u64>(), any::<u64>()), 0..4),
        )
            .prop_map(|(from, to, messages, heartbeats, heartbeat_responses, quiesce)| RaftBatch {
                from,
                to,
                messages,
                heartbeats,
                heartbeat_responses,
                quiesce: quiesce.into_iter().map(|(r, t)| (RangeId(r), Term(t))).collect(),
                snapshot_chunks: Vec::new(),
            })
    }

    /// A mutation of a valid frame: flip, overwrite, insert, delete or truncate bytes.
    #[derive(Clone, Debug)]
    enum Mutation {
        Flip { at: usize, mask: u8 },
        Set { at: usize, value: u8 },
        Insert { at: usize, value: u8 },
        Remove { at: usize },
        Truncate { at: usize },
    }

    fn arb_mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 1u8..).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
            (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
            (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Insert { at, value }),
            any::<usize>().prop_map(|at| Mutation::Remove { at }),
            any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        ]
    }

    fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
        if bytes.is_empty() {
            return;
        }
        let len = bytes.len();
        match *mutation {
            Mutation::Flip { at, mask } => bytes[at % len] ^= mask,
            Mutation::Set { at, value } => bytes[at % len] = value,
            Mutation::Insert { at, value } => bytes.insert(at % (len + 1), value),
            Mutation::Remove { at } => {
                bytes.remove(at % len);
            }
            Mutation::Truncate { at } => bytes.truncate(at % len),
        }
    }

    /// Both decoders must agree: the slice decoder and the stream reader see the same bytes.
    fn decode_both(rt: &tokio::runtime::Runtime, bytes: &[u8]) {
        let from_slice = decode(bytes);
        let from_stream = rt.block_on(read_frame(&mut &bytes[..]));
        match (&from_slice, &from_stream) {
            (Ok((frame, _)), Ok(Some(streamed))) => assert_eq!(frame, streamed),
            (Err(FrameError::Truncated), Ok(None)) => assert!(bytes.is_empty()),
            (Err(a), Err(b)) => assert_eq!(a, b),
            other => panic!("decoders disagree on {bytes:02x?}: {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let rt = runtime();
            decode_both(&rt, &bytes);
        }

        #[test]
        fn random_bytes_behind_a_valid_header_never_panic(
            kind in 0u8..6,
            payload in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut bytes = FRAME_MAGIC.to_vec();
            bytes.push(FRAME_VERSION);
            bytes.push(kind);
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&payload);
            let rt = runtime();
            decode_both(&rt, &bytes);
        }

        #[test]
        fn mutated_frames_never_panic_the_decoder(
            batch in arb_batch(),
            mutations in proptest::collection::vec(arb_mutation(), 1..4),
        ) {
            let mut bytes = encode(&batch).expect("encode");
            for mutation in &mutations {
                apply(&mut bytes, mutation);
            }
            let rt = runtime();
            decode_both(&rt, &bytes);
        }

        #[test]
        fn raft_batches_round_trip(batch in arb_batch()) {
            let bytes = encode(&batch).expect("encode");
            let (frame, used) = decode(&bytes).expect("decode");
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(frame, Frame::RaftBatch(batch.clone()));
            let streamed = runtime().block_on(read_frame(&mut &bytes[..])).expect("read");
            prop_assert_eq!(streamed, Some(Frame::RaftBatch(batch)));
        }
    }
}
