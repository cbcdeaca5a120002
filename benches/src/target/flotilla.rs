//! `flotilla://`: Flotilla's native client (`flotilla_router::client`), QUIC straight to each
//! key's range leader. Reads are linearizable (lease or ReadIndex on the leader).
//!
//! `conns` clients are created (each holds one QUIC connection per node, every request on its
//! own stream) and shared round-robin by the harness's client tasks, as the etcd target shares
//! its gRPC channels.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_router::client::{Client, ClientOptions};

use super::{Connection, Target};
use crate::workload::OpKind;

#[derive(Debug)]
pub struct FlotillaTarget {
    clients: Vec<Client>,
}

impl FlotillaTarget {
    /// `certs_dir`: mutual TLS with that certificate directory; `None` for `--insecure` clusters.
    pub async fn connect(
        addrs: &[String],
        conns: usize,
        certs_dir: Option<PathBuf>,
        op_timeout: Duration,
    ) -> Result<FlotillaTarget> {
        let mut resolved: Vec<SocketAddr> = Vec::new();
        for addr in addrs {
            resolved.extend(
                tokio::net::lookup_host(addr.as_str()).await.with_context(|| format!("resolving {addr}"))?,
            );
        }
        if resolved.is_empty() {
            bail!("no address for {}", addrs.join(","));
        }
        let options = match certs_dir {
            Some(dir) => ClientOptions::with_certs(dir),
            None => ClientOptions::insecure(),
        }
        .request_timeout(op_timeout);
        let mut clients = Vec::with_capacity(conns.max(1));
        for _ in 0..conns.max(1) {
            let client = Client::connect(&resolved, options.clone())
                .await
                .with_context(|| format!("connecting to flotilla at {}", addrs.join(",")))?;
            clients.push(client);
        }
        Ok(FlotillaTarget { clients })
    }
}

impl Target for FlotillaTarget {
    type Conn = FlotillaConnection;

    fn supports(&self, _kind: OpKind) -> bool {
        true
    }

    fn connect(&self, client: usize) -> impl Future<Output = Result<FlotillaConnection>> + Send {
        let client = self.clients[client % self.clients.len()].clone();
        async move { Ok(FlotillaConnection { client }) }
    }
}

/// A clone of a shared client; a cancelled call leaves nothing behind (one stream per request).
#[derive(Debug)]
pub struct FlotillaConnection {
    client: Client,
}

impl Connection for FlotillaConnection {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.client.get(key).await?)
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        Ok(self.client.put(key, value).await?)
    }

    async fn scan(&mut self, start: &[u8], limit: usize) -> Result<usize> {
        Ok(self.client.scan(start, &[], limit).await?.len())
    }
}
