//! Targets: the systems under test, behind one [`Target`] trait so each is measured the same way.
//!
//! A target URL is `[LABEL=]SCHEME://HOST:PORT[,HOST:PORT...]`:
//! - `flotilla://` — Flotilla's native client (`flotilla_router::client`) over QUIC;
//! - `resp://` — Flotilla's RESP gateway or any Redis; clients spread over the addresses;
//! - `etcd://` — etcd v3 over gRPC (the `etcd-client` crate; cargo feature `etcd`).
//!
//! Every client task owns one [`Connection`] and runs one op at a time on it. Whether a
//! connection is a socket of its own (RESP: one request at a time per socket, as a Redis
//! client without pipelining) or a handle on a shared multiplexed channel (gRPC, QUIC) is the
//! target's business; the harness only counts ops and times them.

use std::future::Future;

use anyhow::{bail, Result};

use crate::workload::OpKind;

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod flotilla;
pub mod resp;

/// A system under test.
pub trait Target: Send + Sync + 'static {
    type Conn: Connection;
    /// Whether the target can run ops of this kind (RESP has no ordered range scan).
    fn supports(&self, kind: OpKind) -> bool;
    /// A connection for client number `client` (targets spread clients over their addresses).
    fn connect(&self, client: usize) -> impl Future<Output = Result<Self::Conn>> + Send;
}

/// One client's handle on a target. Ops may be cancelled (timeouts): an implementation must
/// notice on the next call and recover (reconnect) rather than read a stale reply.
pub trait Connection: Send + 'static {
    fn get(&mut self, key: &[u8]) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
    fn put(&mut self, key: &[u8], value: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// Up to `limit` pairs in key order from `start` (inclusive); returns how many.
    fn scan(&mut self, start: &[u8], limit: usize) -> impl Future<Output = Result<usize>> + Send;
}

/// The kind of system a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Flotilla,
    Resp,
    Etcd,
}

impl Scheme {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scheme::Flotilla => "flotilla",
            Scheme::Resp => "resp",
            Scheme::Etcd => "etcd",
        }
    }
}

/// A parsed target URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    /// What reports call it: the `LABEL=` prefix, or the URL.
    pub label: String,
    pub url: String,
    pub scheme: Scheme,
    /// `host:port` strings, resolved when connecting.
    pub addrs: Vec<String>,
}

impl std::str::FromStr for TargetSpec {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> Result<Self> {
        let (label, url) = match text.split_once('=') {
            Some((label, url)) if !label.contains("://") => (Some(label.trim()), url.trim()),
            _ => (None, text.trim()),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("target {text:?}: expected SCHEME://HOST:PORT[,HOST:PORT...] (flotilla, resp or etcd)");
        };
        let scheme = match scheme {
            "flotilla" => Scheme::Flotilla,
            "resp" | "redis" => Scheme::Resp,
            "etcd" => Scheme::Etcd,
            _ => bail!("target {text:?}: unknown scheme {scheme:?} (expected flotilla, resp or etcd)"),
        };
        let addrs: Vec<String> =
            rest.trim_end_matches('/').split(',').map(|a| a.trim().to_string()).collect();
        for addr in &addrs {
            let port_ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                bail!("target {text:?}: address {addr:?} is not HOST:PORT");
            }
        }
        let label = label.filter(|l| !l.is_empty()).map_or_else(|| url.to_string(), str::to_string);
        Ok(TargetSpec { label, url: url.to_string(), scheme, addrs })
    }
}

/// Splits `--compare` values and repeated `--target`s into specs, in order.
pub fn parse_targets(targets: &[String]) -> Result<Vec<TargetSpec>> {
    let mut specs = Vec::new();
    for list in targets {
        for item in split_target_list(list) {
            specs.push(item.parse()?);
        }
    }
    if specs.is_empty() {
        bail!("no target: give --target URL or --compare URL,URL,...");
    }
    Ok(specs)
}

/// `a://h:1,h:2,b://h:3` → `["a://h:1,h:2", "b://h:3"]`: a comma starts a new target only when
/// what follows it has a scheme (or a `LABEL=` prefix); otherwise it is another address.
fn split_target_list(list: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for piece in list.split(',') {
        let starts_target = piece.contains("://") || out.is_empty();
        match out.last_mut() {
            Some(last) if !starts_target => {
                last.push(',');
                last.push_str(piece);
            }
            _ => out.push(piece.to_string()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_labels_and_address_lists() {
        let spec: TargetSpec = "resp://127.0.0.1:6379".parse().unwrap();
        assert_eq!(spec.scheme, Scheme::Resp);
        assert_eq!(spec.label, "resp://127.0.0.1:6379");
        let spec: TargetSpec = "etcd=etcd://127.0.0.1:2379,127.0.0.1:22379".parse().unwrap();
        assert_eq!(spec.label, "etcd");
        assert_eq!(spec.addrs, vec!["127.0.0.1:2379", "127.0.0.1:22379"]);
        assert!("http://x:1".parse::<TargetSpec>().is_err());
        assert!("resp://nohost".parse::<TargetSpec>().is_err());
        assert!("resp://h:99999".parse::<TargetSpec>().is_err());
    }

    #[test]
    fn compare_lists_split_on_schemes() {
        let specs = parse_targets(&[
            "flotilla://127.0.0.1:7000,127.0.0.2:7000,etcd://127.0.0.1:2379".into(),
            "redis=resp://127.0.0.1:6379".into(),
        ])
        .unwrap();
        let labels: Vec<&str> = specs.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["flotilla://127.0.0.1:7000,127.0.0.2:7000", "etcd://127.0.0.1:2379", "redis"]);
        assert_eq!(specs[0].addrs.len(), 2);
        assert!(parse_targets(&[]).is_err());
    }
}
