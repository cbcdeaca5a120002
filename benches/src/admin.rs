//! Reading a Flotilla node's admin HTTP endpoint (`--http`): `/status` (JSON: node id, ranges
//! with their leader) and `/metrics` (Prometheus text). HTTP/1.0 by hand: one GET, read to EOF.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest admin response read.
const RESPONSE_BYTES_MAX: u64 = 256 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The body of `GET path` on `addr` (`host:port`).
pub async fn get(addr: &str, path: &str) -> Result<String> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(RESPONSE_BYTES_MAX).read_to_end(&mut response).await?;
        let text = String::from_utf8(response).context("response is not UTF-8")?;
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("no end of headers"))?;
        let status_line = head.lines().next().unwrap_or_default();
        if status_line.split_whitespace().nth(1) != Some("200") {
            bail!("GET http://{addr}{path}: {status_line}");
        }
        Ok(body.to_string())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fetch)
        .await
        .map_err(|_| anyhow!("GET http://{addr}{path}: timed out"))?
}

/// `/status` parsed.
pub async fn status(addr: &str) -> Result<serde_json::Value> {
    let body = get(addr, "/status").await?;
    serde_json::from_str(&body).with_context(|| format!("parse /status from {addr}"))
}

/// The sum of a counter or gauge over all its label sets in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            // The name must end here: followed by labels or the value.
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            line.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// What `/status` says about one node: its id, how many replicas it holds, how many are
/// quiesced, and the leader (node id) of each range it knows a leader for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeStatus {
    pub node_id: u64,
    pub replicas: u64,
    pub quiesced: u64,
    /// (range id, leader node id)
    pub leaders: Vec<(u64, u64)>,
}

pub fn parse_status(status: &serde_json::Value) -> Result<NodeStatus> {
    let node_id = status["node_id"].as_u64().ok_or_else(|| anyhow!("/status has no node_id"))?;
    let ranges = status["ranges"].as_array().ok_or_else(|| anyhow!("/status has no ranges"))?;
    let quiesced = ranges.iter().filter(|r| r["quiesced"].as_bool() == Some(true)).count() as u64;
    let leaders =
        ranges.iter().filter_map(|r| Some((r["id"].as_u64()?, r["leader"].as_u64()?))).collect::<Vec<_>>();
    Ok(NodeStatus { node_id, replicas: ranges.len() as u64, quiesced, leaders })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_over_labels_and_ignores_prefixes() {
        let text = "# TYPE x counter\nflotilla_peer_batches_sent_total{peer=\"2\"} 10\n\
                    flotilla_peer_batches_sent_total{peer=\"3\"} 5\nflotilla_peer_batches_sent_total_x 99\n\
                    other 1\n";
        assert_eq!(metric_sum(text, "flotilla_peer_batches_sent_total"), 15.0);
        assert_eq!(metric_sum(text, "other"), 1.0);
        assert_eq!(metric_sum(text, "missing"), 0.0);
    }

    #[test]
    fn status_parses() {
        let json = serde_json::json!({
            "node_id": 2,
            "ranges": [
                {"id": 1, "leader": 2, "quiesced": true},
                {"id": 2, "leader": null, "quiesced": false},
            ],
        });
        let status = parse_status(&json).unwrap();
        assert_eq!(status, NodeStatus { node_id: 2, replicas: 2, quiesced: 1, leaders: vec![(1, 2)] });
    }
}
