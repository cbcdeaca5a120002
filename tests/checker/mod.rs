//! A history checker for the fault-injection tests.
//!
//! - Linearizability of single-key register operations (GET / SET / DEL / SET NX / SET XX /
//!   INCRBY / APPEND), key by key, with a memoized depth-first search (Wing & Gong / Lowe, as
//!   in Porcupine). Ok ops are placed inside their [call, return] intervals; unknown-outcome ops
//!   (timeouts, drops, crashes) may take effect any time after their call, or never; failed ops
//!   never took effect. A key whose search runs out of budget is `Unknown`, which is not a pass.
//! - `SetCheck` for unique-write sets: acknowledged adds must survive, failed ones must not
//!   appear.
//! - Histories as JSON lines (`save_history` / `load_history`), to keep a failing history and
//!   check it again.
//!
//! Use from a test crate with `mod checker;` (or `#[path = "checker/mod.rs"] mod checker;`).
//! Keys start absent: give a key an initial value with an ok write before the workload.

#![allow(dead_code, unused_imports)]

mod history;
mod linear;
pub mod model;
mod set;

pub use history::{
    load_history, save_history, show, show_result, show_state, show_time, Key, Op, OpKind, OpResult, Outcome,
    Pending, Recorder, Value,
};
pub use linear::{
    assert_linearizable, check, check_with, history_path, Candidate, CheckOptions, KeyReport, Overall,
    Report, SearchStats, Verdict, Violation,
};
pub use set::{SetCheck, SetReport};
