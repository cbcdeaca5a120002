//! The sequential specification of one key: a register that is absent (`None`) or holds bytes,
//! with the gateway's operations on it.

use super::history::{Op, OpKind, OpResult, Outcome, Value};

/// Applies `kind` to a register holding `state`: the new state and what the op returns.
pub fn step(state: Option<&[u8]>, kind: &OpKind) -> (Option<Value>, OpResult) {
    let keep = || state.map(<[u8]>::to_vec);
    match kind {
        OpKind::Read => (keep(), OpResult::Value(keep())),
        OpKind::Write(Some(v)) => (Some(v.clone()), OpResult::Done),
        OpKind::Write(None) => (None, OpResult::Int(i64::from(state.is_some()))),
        OpKind::SetNx(v) => match state {
            None => (Some(v.clone()), OpResult::Flag(true)),
            Some(_) => (keep(), OpResult::Flag(false)),
        },
        OpKind::SetXx(v) => match state {
            Some(_) => (Some(v.clone()), OpResult::Flag(true)),
            None => (None, OpResult::Flag(false)),
        },
        OpKind::Incr(by) => {
            let current = match state {
                None => Some(0),
                Some(b) => parse_int(b),
            };
            match current.and_then(|c| c.checked_add(*by)) {
                Some(n) => (Some(n.to_string().into_bytes()), OpResult::Int(n)),
                None => (keep(), OpResult::Error),
            }
        }
        OpKind::Append(v) => {
            let mut s = keep().unwrap_or_default();
            s.extend_from_slice(v);
            let len = i64::try_from(s.len()).unwrap_or(i64::MAX);
            (Some(s), OpResult::Int(len))
        }
    }
}

/// An i64 in canonical decimal form (no sign on positives, no leading zeros, no spaces), as
/// the store's INCR accepts it.
pub fn parse_int(b: &[u8]) -> Option<i64> {
    let n: i64 = std::str::from_utf8(b).ok()?.parse().ok()?;
    (n.to_string().as_bytes() == b).then_some(n)
}

/// Whether an observed result agrees with the model's: `Done` agrees with anything.
pub fn agrees(observed: &OpResult, model: &OpResult) -> bool {
    matches!(observed, OpResult::Done) || observed == model
}

/// Why an op can't be in a history, if it can't: results of the wrong shape for its kind, an
/// `Ok` without a return time, a return before the call.
pub fn validate(op: &Op) -> Result<(), String> {
    if let Some(ret) = op.ret {
        if ret < op.call && !matches!(op.outcome, Outcome::Unknown) {
            return Err(format!("returns ({ret}) before its call ({})", op.call));
        }
    }
    let Outcome::Ok(r) = &op.outcome else { return Ok(()) };
    if op.ret.is_none() {
        return Err("ok, but never returned (ret = None)".into());
    }
    let fits = match (&op.kind, r) {
        (_, OpResult::Done) => true,
        (OpKind::Read, OpResult::Value(_)) => true,
        (OpKind::Write(None), OpResult::Int(n)) => *n == 0 || *n == 1,
        (OpKind::SetNx(_) | OpKind::SetXx(_), OpResult::Flag(_)) => true,
        (OpKind::Incr(_), OpResult::Int(_) | OpResult::Error) => true,
        (OpKind::Append(_), OpResult::Int(n)) => *n >= 0,
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!("result {r:?} doesn't fit a {:?}", op.kind))
    }
}
