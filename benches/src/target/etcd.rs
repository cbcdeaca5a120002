//! `etcd://`: etcd v3 over gRPC with the `etcd-client` crate (cargo feature `etcd`).
//!
//! `conns` clients (each one HTTP/2 channel balanced over all endpoints) are shared round-robin
//! by the harness's client tasks, as etcd's own `benchmark` tool shares `--conns` among its
//! `--clients`. Reads are etcd's default Range: linearizable (not `serializable`).

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};

use super::{Connection, Target};
use crate::workload::OpKind;

pub struct EtcdTarget {
    clients: Vec<KvClient>,
}

impl std::fmt::Debug for EtcdTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTarget").field("conns", &self.clients.len()).finish()
    }
}

impl EtcdTarget {
    pub async fn connect(addrs: &[String], conns: usize) -> Result<EtcdTarget> {
        let endpoints: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
        let mut clients = Vec::with_capacity(conns.max(1));
        for _ in 0..conns.max(1) {
            let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(3));
            let client = Client::connect(&endpoints, Some(options))
                .await
                .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
            clients.push(client.kv_client());
        }
        Ok(EtcdTarget { clients })
    }
}

impl Target for EtcdTarget {
    type Conn = EtcdConnection;

    fn supports(&self, _kind: OpKind) -> bool {
        true
    }

    fn connect(&self, client: usize) -> impl Future<Output = Result<EtcdConnection>> + Send {
        let kv = self.clients[client % self.clients.len()].clone();
        async move { Ok(EtcdConnection { kv }) }
    }
}

/// A handle on one shared channel; a cancelled call leaves nothing behind (gRPC streams are
/// independent), so there is nothing to recover.
pub struct EtcdConnection {
    kv: KvClient,
}

impl std::fmt::Debug for EtcdConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdConnection")
    }
}

impl Connection for EtcdConnection {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let response = self.kv.get(key, None).await?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.kv.put(key, value, None).await?;
        Ok(())
    }

    async fn scan(&mut self, start: &[u8], limit: usize) -> Result<usize> {
        let options = GetOptions::new().with_from_key().with_limit(limit as i64);
        let response = self.kv.get(start, Some(options)).await?;
        Ok(response.kvs().len())
    }
}
