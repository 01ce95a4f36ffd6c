//! `cella lease`: grant, revoke, inspect, list and keep alive leases. Ids are hex, as etcdctl
//! prints them.

use std::io::{self, Write};

use cella_sdk::LeaseId;
use clap::Subcommand;
use serde::Serialize;

use crate::output::{emit, Format, Render, Text};
use crate::{until_interrupted, Remote};

/// The `lease` verbs.
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease that expires after TTL seconds unless kept alive.
    Grant {
        /// Time to live in seconds.
        #[arg(value_parser = parse_ttl, allow_negative_numbers = true)]
        ttl: i64,
    },
    /// Revoke a lease now, deleting every key attached to it.
    Revoke {
        /// The lease id (hex).
        id: LeaseId,
    },
    /// Show a lease's remaining time.
    Ttl {
        /// The lease id (hex).
        id: LeaseId,
        /// Also list the keys attached to it.
        #[arg(long)]
        keys: bool,
    },
    /// List live leases.
    List,
    /// Refresh a lease, printing each new TTL, until Ctrl-C, SIGTERM or the lease is gone.
    KeepAlive {
        /// The lease id (hex).
        id: LeaseId,
    },
}

fn parse_ttl(input: &str) -> Result<i64, String> {
    match input.parse::<i64>() {
        Ok(ttl) if ttl > 0 => Ok(ttl),
        _ => Err("TTL must be a whole number of seconds > 0".to_owned()),
    }
}

/// Runs one `lease` verb.
pub async fn run(command: LeaseCommand, remote: &Remote, format: Format) -> anyhow::Result<()> {
    let leases = remote.connect().await?.lease();
    match command {
        LeaseCommand::Grant { ttl } => {
            let grant = leases.grant(ttl).await?;
            emit(
                format,
                &LeaseView::new(
                    grant.id,
                    LeaseState::Granted {
                        ttl: grant.ttl_secs,
                    },
                ),
            )
        }
        LeaseCommand::Revoke { id } => {
            leases.revoke(id).await?;
            emit(format, &LeaseView::new(id, LeaseState::Revoked))
        }
        LeaseCommand::Ttl { id, keys } => {
            let lease = leases.time_to_live(id, keys).await?;
            let state = LeaseState::Remaining {
                ttl: lease.ttl_secs,
                granted_ttl: lease.granted_ttl_secs,
                keys: keys.then(|| lease.keys.iter().map(|key| Text::from(&key[..])).collect()),
            };
            emit(format, &LeaseView::new(id, state))
        }
        LeaseCommand::List => {
            let ids = leases.leases().await?;
            emit(
                format,
                &LeaseListView {
                    leases: ids.iter().map(LeaseId::to_string).collect(),
                },
            )
        }
        LeaseCommand::KeepAlive { id } => {
            let mut keep_alive = leases.keep_alive(id).await?;
            let refreshed = |ttl| LeaseView::new(id, LeaseState::Refreshed { ttl });
            emit(format, &refreshed(keep_alive.latest()?))?;
            until_interrupted(async move {
                loop {
                    emit(format, &refreshed(keep_alive.refreshed().await?))?;
                }
            })
            .await
        }
    }
}

/// One lease as printed, after one verb.
#[derive(Debug, Serialize)]
struct LeaseView {
    id: String,
    #[serde(flatten)]
    state: LeaseState,
}

impl LeaseView {
    fn new(id: LeaseId, state: LeaseState) -> Self {
        LeaseView {
            id: id.to_string(),
            state,
        }
    }
}

/// What a verb learned about the lease; TTLs are in seconds.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum LeaseState {
    Granted {
        ttl: i64,
    },
    Revoked,
    Remaining {
        ttl: i64,
        granted_ttl: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        keys: Option<Vec<Text>>,
    },
    Refreshed {
        ttl: i64,
    },
}

impl Render for LeaseView {
    /// etcdctl's sentences.
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let id = &self.id;
        match &self.state {
            LeaseState::Granted { ttl } => writeln!(out, "lease {id} granted with TTL({ttl}s)"),
            LeaseState::Revoked => writeln!(out, "lease {id} revoked"),
            LeaseState::Remaining {
                ttl,
                granted_ttl,
                keys,
            } => {
                write!(
                    out,
                    "lease {id} granted with TTL({granted_ttl}s), remaining({ttl}s)"
                )?;
                if let Some(keys) = keys {
                    let keys: Vec<String> = keys.iter().map(Text::to_string).collect();
                    write!(out, ", attached keys([{}])", keys.join(" "))?;
                }
                writeln!(out)
            }
            LeaseState::Refreshed { ttl } => writeln!(out, "lease {id} keepalived with TTL({ttl})"),
        }
    }
}

#[derive(Debug, Serialize)]
struct LeaseListView {
    leases: Vec<String>,
}

impl Render for LeaseListView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "found {} leases", self.leases.len())?;
        self.leases.iter().try_for_each(|id| writeln!(out, "{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::table;

    #[test]
    fn grant_prints_like_etcdctl() {
        let view = LeaseView::new(
            LeaseId(0x694d_7a1b_2c3d_4e5f),
            LeaseState::Granted { ttl: 10 },
        );
        assert_eq!(
            table(&view),
            "lease 694d7a1b2c3d4e5f granted with TTL(10s)\n"
        );
        let json = serde_json::to_string(&view).expect("serializable");
        assert_eq!(
            json,
            r#"{"id":"694d7a1b2c3d4e5f","state":"granted","ttl":10}"#
        );
    }

    #[test]
    fn ttl_must_be_positive() {
        assert_eq!(parse_ttl("10"), Ok(10));
        for input in ["0", "-3", "1.5", "ten"] {
            assert!(parse_ttl(input).is_err(), "{input:?} accepted");
        }
    }
}
