//! The node's configuration: one struct, read from an optional TOML file; the CLI lays
//! flags and `CELLA_*` environment variables over it (flags > env > file > defaults).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cella_config::ConfigSettings;
use cella_core::CoreConfig;
use cella_idgen::IdgenConfig;
use cella_mq::MqConfig;
use cella_registry::RegistryConfig;
use serde::{Deserialize, Serialize};

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// This member's id (1 for an embedded node).
    pub node_id: u64,
    /// Address for gRPC, REST, `/metrics` and the health checks.
    pub listen: String,
    /// Initial members as `ID=HOST:PORT,...`; empty for a single node.
    pub peers: String,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// The consistent core.
    pub core: CoreConfig,
    /// The service registry.
    pub registry: RegistryConfig,
    /// Unique ids: batch limit, generator and segment tunables, extra layouts.
    pub idgen: IdgenConfig,
    /// The config center.
    pub config: ConfigSettings,
    /// The message broker (`[mq]`); its data lives in `<data_dir>/mq`.
    pub mq: MqConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen: "127.0.0.1:7070".into(),
            peers: String::new(),
            data_dir: PathBuf::from("./cella-data"),
            core: CoreConfig::default(),
            registry: RegistryConfig::default(),
            idgen: IdgenConfig::default(),
            config: ConfigSettings::default(),
            mq: MqConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Reads `file` if given, else the defaults.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = file else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// The initial members by id: `peers`, or this node alone.
    pub fn initial_members(&self) -> anyhow::Result<BTreeMap<u64, String>> {
        if self.peers.trim().is_empty() {
            return Ok(BTreeMap::from([(self.node_id, self.listen.clone())]));
        }
        let mut members = BTreeMap::new();
        for part in self
            .peers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let Some((id, addr)) = part.split_once('=') else {
                bail!("--peers: `{part}` must look like ID=HOST:PORT");
            };
            let id: u64 = id.trim().parse().with_context(|| {
                format!("--peers: `{id}` in `{part}` must be a positive integer id")
            })?;
            if id == 0 {
                bail!("--peers: member id must be > 0 in `{part}`");
            }
            if !addr.contains(':') {
                bail!("--peers: address `{addr}` in `{part}` must be HOST:PORT");
            }
            if members.insert(id, addr.trim().to_string()).is_some() {
                bail!("--peers: member id {id} appears twice");
            }
        }
        if !members.contains_key(&self.node_id) {
            bail!(
                "--node-id {} must be one of the ids in --peers",
                self.node_id
            );
        }
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_must_include_this_node() {
        let mut c = ServerConfig {
            node_id: 2,
            peers: "1=127.0.0.1:1,2=127.0.0.1:2".into(),
            ..Default::default()
        };
        assert_eq!(c.initial_members().expect("valid").len(), 2);
        c.node_id = 3;
        assert!(c
            .initial_members()
            .unwrap_err()
            .to_string()
            .contains("--node-id 3"));
        c.peers = "1=127.0.0.1:1,1=127.0.0.1:2".into();
        c.node_id = 1;
        assert!(c
            .initial_members()
            .unwrap_err()
            .to_string()
            .contains("twice"));
        c.peers = "x=1".into();
        assert!(c.initial_members().is_err());
    }

    #[test]
    fn single_node_is_its_own_member() {
        let c = ServerConfig::default();
        assert_eq!(
            c.initial_members().expect("valid"),
            BTreeMap::from([(1, "127.0.0.1:7070".to_string())])
        );
    }

    #[test]
    fn toml_file_fills_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cella.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\n[core]\nelection_timeout_ms = 300\n",
        )
        .expect("write");
        let c = ServerConfig::load(Some(&path)).expect("loads");
        assert_eq!(c.listen, "127.0.0.1:9000");
        assert_eq!(c.core.election_timeout_ms, 300);
        std::fs::write(&path, "lisen = \"x\"\n").expect("write");
        assert!(format!("{:#}", ServerConfig::load(Some(&path)).unwrap_err()).contains("lisen"));
    }
}
