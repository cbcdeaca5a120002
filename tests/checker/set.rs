//! The unique-writes set check: clients add distinct elements, some acknowledged, some failed,
//! some with unknown outcome; a final read returns what the set holds. Acknowledged elements
//! must all be there, failed ones must not, nothing that was never added may appear, and no
//! element may appear twice.

use std::collections::BTreeMap;
use std::fmt;

use super::history::Outcome;

#[derive(Clone, Copy, Debug, Default)]
struct Attempts {
    ok: u32,
    failed: u32,
    unknown: u32,
}

/// Collects the adds and the final read; `check` judges them.
#[derive(Clone, Debug)]
pub struct SetCheck<T: Ord> {
    adds: BTreeMap<T, Attempts>,
    read: Option<Vec<T>>,
}

impl<T: Ord + Clone + fmt::Debug> Default for SetCheck<T> {
    fn default() -> Self {
        SetCheck::new()
    }
}

/// What became of the adds. Elements added more than once count as acknowledged if any add
/// was, else unknown if any add was, else failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetReport<T> {
    /// Distinct elements added.
    pub attempted: usize,
    pub acknowledged: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Distinct elements in the final read.
    pub read: usize,
    /// Acknowledged but absent (must be empty).
    pub lost: Vec<T>,
    /// Every add failed, yet present (must be empty).
    pub failed_present: Vec<T>,
    /// Present but never added (must be empty).
    pub unexpected: Vec<T>,
    /// Present more than once in the final read (must be empty).
    pub duplicated: Vec<T>,
    /// Unknown-outcome elements that turned out to have been added / not added.
    pub unknown_present: usize,
    pub unknown_absent: usize,
    /// `check` was called before `final_read`.
    pub no_final_read: bool,
}

impl<T: Ord + Clone + fmt::Debug> SetCheck<T> {
    pub fn new() -> SetCheck<T> {
        SetCheck { adds: BTreeMap::new(), read: None }
    }

    /// Records an add with its outcome (any `Outcome::Ok(_)` is an acknowledgement).
    pub fn add(&mut self, elem: T, outcome: &Outcome) {
        let a = self.adds.entry(elem).or_default();
        match outcome {
            Outcome::Ok(_) => a.ok += 1,
            Outcome::Failed => a.failed += 1,
            Outcome::Unknown => a.unknown += 1,
        }
    }

    pub fn acknowledged(&mut self, elem: T) {
        self.adds.entry(elem).or_default().ok += 1;
    }

    pub fn failed(&mut self, elem: T) {
        self.adds.entry(elem).or_default().failed += 1;
    }

    pub fn unknown(&mut self, elem: T) {
        self.adds.entry(elem).or_default().unknown += 1;
    }

    /// The final read's elements (duplicates kept: they are reported). A second call replaces
    /// the first.
    pub fn final_read(&mut self, elems: impl IntoIterator<Item = T>) {
        self.read = Some(elems.into_iter().collect());
    }

    pub fn check(&self) -> SetReport<T> {
        let mut counts: BTreeMap<&T, usize> = BTreeMap::new();
        for e in self.read.iter().flatten() {
            *counts.entry(e).or_default() += 1;
        }
        let mut r = SetReport {
            attempted: self.adds.len(),
            acknowledged: 0,
            failed: 0,
            unknown: 0,
            read: counts.len(),
            lost: Vec::new(),
            failed_present: Vec::new(),
            unexpected: Vec::new(),
            duplicated: counts.iter().filter(|(_, &c)| c > 1).map(|(e, _)| (*e).clone()).collect(),
            unknown_present: 0,
            unknown_absent: 0,
            no_final_read: self.read.is_none(),
        };
        for (e, a) in &self.adds {
            let present = counts.contains_key(e);
            if a.ok > 0 {
                r.acknowledged += 1;
                if !present {
                    r.lost.push(e.clone());
                }
            } else if a.unknown > 0 {
                r.unknown += 1;
                if present {
                    r.unknown_present += 1;
                } else {
                    r.unknown_absent += 1;
                }
            } else {
                r.failed += 1;
                if present {
                    r.failed_present.push(e.clone());
                }
            }
        }
        r.unexpected = counts.keys().filter(|e| !self.adds.contains_key(e)).map(|e| (*e).clone()).collect();
        r
    }
}

impl<T> SetReport<T> {
    pub fn is_ok(&self) -> bool {
        !self.no_final_read
            && self.lost.is_empty()
            && self.failed_present.is_empty()
            && self.unexpected.is_empty()
            && self.duplicated.is_empty()
    }
}

impl<T: fmt::Debug> SetReport<T> {
    /// Panics with the report unless it is ok.
    pub fn assert_ok(&self) {
        assert!(self.is_ok(), "{self}");
    }
}

impl<T: fmt::Debug> fmt::Display for SetReport<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "set {}: {} added ({} acknowledged, {} failed, {} unknown: {} present, {} absent); {} read; \
             {} lost, {} failed but present, {} unexpected, {} duplicated{}",
            if self.is_ok() { "ok" } else { "NOT OK" },
            self.attempted,
            self.acknowledged,
            self.failed,
            self.unknown,
            self.unknown_present,
            self.unknown_absent,
            self.read,
            self.lost.len(),
            self.failed_present.len(),
            self.unexpected.len(),
            self.duplicated.len(),
            if self.no_final_read { "; NO FINAL READ" } else { "" }
        )?;
        for (what, list) in [
            ("lost (acknowledged, absent)", &self.lost),
            ("failed but present", &self.failed_present),
            ("unexpected (never added)", &self.unexpected),
            ("duplicated", &self.duplicated),
        ] {
            if !list.is_empty() {
                let shown: Vec<String> = list.iter().take(20).map(|e| format!("{e:?}")).collect();
                let more =
                    if list.len() > 20 { format!(" and {} more", list.len() - 20) } else { String::new() };
                writeln!(f, "  {what}: {}{more}", shown.join(", "))?;
            }
        }
        Ok(())
    }
}
