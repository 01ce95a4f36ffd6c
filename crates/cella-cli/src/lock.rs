//! `cella lock` (acquire, release, status) and `cella elect` (campaign, leader, observe,
//! resign). Lease ids are hex, as etcdctl prints them.

use std::io::{self, Write};
use std::time::Duration;

use cella_sdk::lock::{AcquireOptions, LockParty, LockStatus};
use cella_sdk::LeaseId;
use clap::Subcommand;
use futures::StreamExt;
use serde::Serialize;

use crate::output::{emit, Format, Render, Text};
use crate::{stop_signal, until_interrupted, Remote};

/// The `lock` verbs.
#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Take a lock: wait for it (or fail at once with --try) and print its fencing token.
    /// Without --hold the lock lasts TTL seconds unless released.
    Acquire {
        /// The lock's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Lease TTL in seconds: how long the hold lasts if not kept alive (1..=86400).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..=86_400))]
        ttl: i64,
        /// How long to wait for the lock, in milliseconds.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
        /// Fail at once if the lock is held.
        #[arg(long = "try")]
        try_once: bool,
        /// Keep the lock (renewing its lease) until Ctrl-C or SIGTERM, then release it.
        #[arg(long)]
        hold: bool,
    },
    /// Release a lock held by a lease; refused (and nothing released) for any other lease.
    Release {
        /// The lock's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// The lease that holds it (hex).
        #[arg(long)]
        lease: LeaseId,
        /// Also require this fencing token.
        #[arg(long, default_value_t = 0)]
        fencing_token: i64,
    },
    /// Show a lock's holder, since which revision it holds, and its waiters in order.
    Status {
        /// The lock's name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
}

/// The `elect` verbs.
#[derive(Debug, Subcommand)]
pub enum ElectCommand {
    /// Campaign with VALUE; once elected, lead (renewing the lease) until Ctrl-C or SIGTERM,
    /// then resign. Exits 1 if the leadership is lost meanwhile.
    Campaign {
        /// The election's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// The value to proclaim as leader.
        value: String,
        /// Lease TTL in seconds (1..=86400).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=86_400))]
        ttl: i64,
    },
    /// Print the current leader's value.
    Leader {
        /// The election's name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Print the leader's value now and on every change, until Ctrl-C or SIGTERM.
    Observe {
        /// The election's name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// End the campaign of a lease (leading or waiting).
    Resign {
        /// The election's name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// The campaign's lease (hex).
        #[arg(long)]
        lease: LeaseId,
    },
}

fn parse_name(input: &str) -> Result<String, String> {
    match input.is_empty() {
        true => Err("the name must not be empty".to_owned()),
        false => Ok(input.to_owned()),
    }
}

/// Runs one `lock` verb.
pub async fn run_lock(command: LockCommand, remote: &Remote, format: Format) -> anyhow::Result<()> {
    let locks = remote.connect().await?.lock();
    match command {
        LockCommand::Acquire {
            name,
            ttl,
            timeout_ms,
            try_once,
            hold,
        } => {
            let options = AcquireOptions {
                ttl_secs: ttl,
                timeout: Duration::from_millis(timeout_ms),
            };
            if !hold {
                let held = locks.acquire_for_ttl(&name, options, try_once).await?;
                return emit(format, &HeldView::new(&name, &held));
            }
            let mut guard = match try_once {
                true => locks.try_acquire(&name, ttl).await?.ok_or_else(|| {
                    anyhow::anyhow!("lock {name:?} is held by someone else; --try does not wait")
                })?,
                false => locks.acquire(&name, options).await?,
            };
            let held = LockParty {
                key: guard.key().to_owned(),
                lease: guard.lease().unwrap_or(LeaseId(0)),
                fencing_token: guard.fencing_token(),
            };
            // Listening from before the banner: a stop right after it still releases.
            let stop = stop_signal();
            emit(format, &HeldView::new(&name, &held))?;
            let lost = tokio::select! {
                error = guard.lost() => Some(error),
                _ = stop => None,
            };
            match lost {
                Some(error) => anyhow::bail!("lost lock {name:?}: {error}"),
                None => {
                    guard.release().await?;
                    Ok(())
                }
            }
        }
        LockCommand::Release {
            name,
            lease,
            fencing_token,
        } => {
            let was_holder = locks.release(&name, lease, fencing_token).await?;
            emit(format, &ReleasedView { name, was_holder })
        }
        LockCommand::Status { name } => emit(format, &StatusView::from(locks.status(&name).await?)),
    }
}

/// Runs one `elect` verb.
pub async fn run_elect(
    command: ElectCommand,
    remote: &Remote,
    format: Format,
) -> anyhow::Result<()> {
    let elections = remote.connect().await?.election();
    match command {
        ElectCommand::Campaign { name, value, ttl } => {
            let mut leadership = elections.campaign(&name, value.clone(), ttl).await?;
            let view = LeaderView {
                name: name.clone(),
                value: Some(Text::from(value.as_bytes())),
                lease: Some(leadership.lease().to_string()),
            };
            let stop = stop_signal();
            emit(format, &view)?;
            tokio::select! {
                error = leadership.lost() => anyhow::bail!("lost the leadership of {name:?}: {error}"),
                _ = stop => {}
            }
            leadership.resign().await?;
            Ok(())
        }
        ElectCommand::Leader { name } => {
            let value = elections.leader(&name).await?;
            let view = LeaderView {
                name: name.clone(),
                value: value.as_deref().map(Text::from),
                lease: None,
            };
            emit(format, &view)?;
            if view.value.is_none() {
                anyhow::bail!("election {name:?} has no leader");
            }
            Ok(())
        }
        ElectCommand::Observe { name } => {
            let mut changes = Box::pin(elections.observe(&name).await?);
            until_interrupted(async move {
                while let Some(value) = changes.next().await {
                    let view = LeaderView {
                        name: name.clone(),
                        value: Some(Text::from(&value?[..])),
                        lease: None,
                    };
                    emit(format, &view)?;
                }
                anyhow::bail!("the server closed the observe stream")
            })
            .await
        }
        ElectCommand::Resign { name, lease } => {
            elections.resign(&name, lease).await?;
            emit(
                format,
                &ResignedView {
                    name,
                    lease: lease.to_string(),
                },
            )
        }
    }
}

#[derive(Debug, Serialize)]
struct HeldView {
    name: String,
    key: String,
    lease: String,
    fencing_token: i64,
}

impl HeldView {
    fn new(name: &str, held: &LockParty) -> Self {
        HeldView {
            name: name.to_owned(),
            key: held.key.clone(),
            lease: held.lease.to_string(),
            fencing_token: held.fencing_token,
        }
    }
}

impl Render for HeldView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "lock {} held by lease {} (key {}, fencing token {})",
            self.name, self.lease, self.key, self.fencing_token
        )
    }
}

#[derive(Debug, Serialize)]
struct ReleasedView {
    name: String,
    was_holder: bool,
}

impl Render for ReleasedView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        match self.was_holder {
            true => writeln!(out, "lock {} released", self.name),
            false => writeln!(out, "lock {}: left the queue (it was waiting)", self.name),
        }
    }
}

#[derive(Debug, Serialize)]
struct PartyView {
    key: String,
    lease: String,
    fencing_token: i64,
}

impl From<LockParty> for PartyView {
    fn from(p: LockParty) -> Self {
        PartyView {
            key: p.key,
            lease: p.lease.to_string(),
            fencing_token: p.fencing_token,
        }
    }
}

#[derive(Debug, Serialize)]
struct StatusView {
    name: String,
    holder: Option<PartyView>,
    held_since_revision: i64,
    /// Grant time in ms since 1970, when the answering node granted the hold.
    held_since_unix_ms: Option<u64>,
    waiters: Vec<PartyView>,
    revision: i64,
}

impl From<LockStatus> for StatusView {
    fn from(s: LockStatus) -> Self {
        StatusView {
            name: s.name,
            holder: s.holder.map(PartyView::from),
            held_since_revision: s.held_since.0,
            held_since_unix_ms: s.held_since_unix_ms,
            waiters: s.waiters.into_iter().map(PartyView::from).collect(),
            revision: s.revision.0,
        }
    }
}

impl Render for StatusView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        match &self.holder {
            Some(h) => writeln!(
                out,
                "lock {}: held by lease {} since revision {}{} (fencing token {})",
                self.name,
                h.lease,
                self.held_since_revision,
                self.held_since_unix_ms
                    .map(|ms| format!(", granted at unix ms {ms}"))
                    .unwrap_or_default(),
                h.fencing_token
            )?,
            None => writeln!(out, "lock {}: free", self.name)?,
        }
        for (i, w) in self.waiters.iter().enumerate() {
            writeln!(
                out,
                "  waiter {}: lease {} (queued at revision {})",
                i + 1,
                w.lease,
                w.fencing_token
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct LeaderView {
    name: String,
    value: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<String>,
}

impl Render for LeaderView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        match (&self.value, &self.lease) {
            (Some(v), Some(lease)) => {
                writeln!(out, "elected in {} as {v} (lease {lease})", self.name)
            }
            (Some(v), None) => writeln!(out, "{v}"),
            (None, _) => writeln!(out, "election {} has no leader", self.name),
        }
    }
}

#[derive(Debug, Serialize)]
struct ResignedView {
    name: String,
    lease: String,
}

impl Render for ResignedView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "lease {} resigned from election {}",
            self.lease, self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::table;

    #[test]
    fn status_lists_holder_and_waiters_in_order() {
        let view = StatusView::from(LockStatus {
            name: "orders".into(),
            holder: Some(LockParty {
                key: "orders/a".into(),
                lease: LeaseId(0xa),
                fencing_token: 7,
            }),
            held_since: cella_sdk::Revision(9),
            held_since_unix_ms: Some(1_700_000_000_123),
            waiters: vec![LockParty {
                key: "orders/b".into(),
                lease: LeaseId(0xb),
                fencing_token: 8,
            }],
            revision: cella_sdk::Revision(12),
        });
        assert_eq!(
            table(&view),
            "lock orders: held by lease 000000000000000a since revision 9, granted at unix ms 1700000000123 (fencing token 7)\n  waiter 1: lease 000000000000000b (queued at revision 8)\n"
        );
    }
}
