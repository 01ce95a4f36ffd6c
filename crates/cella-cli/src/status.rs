//! `cella status`: asks every member for its status and shows leader, term, indexes and lag.
//!
//! Lag is the leader's raft index minus the member's applied index: how many committed-or-not
//! entries the member still has to apply. A member that does not answer gets a row with its
//! error, and the command exits 1 after printing the whole table.

use std::io::{self, Write};

use cella_sdk::cluster::Member;
use cella_sdk::maintenance::NodeStatus;
use serde::Serialize;

use crate::output::{emit, write_columns, Format, Render};
use crate::Remote;

/// Runs `cella status`.
pub async fn run(remote: &Remote, format: Format) -> anyhow::Result<()> {
    let members = remote.connect().await?.cluster().members().await?;
    let answers = futures::future::join_all(members.iter().map(|member| ask(remote, member))).await;
    let view = StatusView {
        members: member_rows(&members, answers),
    };
    emit(format, &view)?;
    let silent = view
        .members
        .iter()
        .filter(|row| row.error.is_some())
        .count();
    if silent > 0 {
        anyhow::bail!("{silent} of {} members did not answer", view.members.len());
    }
    Ok(())
}

/// The member's status, asked at its first client URL.
async fn ask(remote: &Remote, member: &Member) -> Result<NodeStatus, String> {
    let endpoint = member
        .client_urls
        .first()
        .ok_or("the member has no client URL yet")?;
    let client = remote
        .connect_to(endpoint)
        .await
        .map_err(|error| format!("{error:#}"))?;
    client
        .maintenance()
        .status()
        .await
        .map_err(|error| error.to_string())
}

/// One row per member, in member-list order; `answers[i]` is `members[i]`'s.
fn member_rows(members: &[Member], answers: Vec<Result<NodeStatus, String>>) -> Vec<MemberRow> {
    let leader = answers.iter().flatten().find_map(|status| status.leader);
    let leader_raft_index = answers
        .iter()
        .flatten()
        .find(|status| Some(status.member_id) == leader)
        .map(|status| status.raft_index);
    members
        .iter()
        .zip(answers)
        .map(|(member, answer)| {
            let mut row = MemberRow {
                id: member.id.to_string(),
                name: member.name.clone(),
                endpoint: member.client_urls.first().cloned().unwrap_or_default(),
                leader: Some(member.id) == leader,
                term: None,
                raft_index: None,
                applied_index: None,
                lag: None,
                error: None,
            };
            match answer {
                Ok(status) => {
                    row.term = Some(status.raft_term);
                    row.raft_index = Some(status.raft_index);
                    row.applied_index = Some(status.raft_applied_index);
                    row.lag = leader_raft_index
                        .map(|index| index.saturating_sub(status.raft_applied_index));
                }
                Err(error) => row.error = Some(error),
            }
            row
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct StatusView {
    members: Vec<MemberRow>,
}

/// One member as printed; the numbers are absent when it did not answer.
#[derive(Debug, Serialize)]
struct MemberRow {
    id: String,
    name: String,
    endpoint: String,
    leader: bool,
    term: Option<u64>,
    raft_index: Option<u64>,
    applied_index: Option<u64>,
    lag: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Render for StatusView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let number =
            |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |value| value.to_string());
        // The ERROR column only when some member did not answer.
        let any_error = self.members.iter().any(|row| row.error.is_some());
        let rows: Vec<Vec<String>> = self
            .members
            .iter()
            .map(|row| {
                let mut cells = vec![
                    row.id.clone(),
                    row.name.clone(),
                    row.endpoint.clone(),
                    if row.leader { "yes" } else { "no" }.to_owned(),
                    number(row.term),
                    number(row.raft_index),
                    number(row.applied_index),
                    number(row.lag),
                ];
                if any_error {
                    cells.push(row.error.clone().unwrap_or_default());
                }
                cells
            })
            .collect();
        let headers = [
            "ID",
            "NAME",
            "ENDPOINT",
            "LEADER",
            "TERM",
            "RAFT INDEX",
            "APPLIED INDEX",
            "LAG",
            "ERROR",
        ];
        let shown = if any_error {
            headers.len()
        } else {
            headers.len() - 1
        };
        write_columns(out, &headers[..shown], &rows)
    }
}

#[cfg(test)]
mod tests {
    use cella_sdk::{MemberId, Revision};

    use super::*;

    fn member(id: u64) -> Member {
        Member {
            id: MemberId(id),
            name: format!("node{id}"),
            peer_urls: Vec::new(),
            client_urls: vec![format!("http://127.0.0.1:{}", 7000 + id)],
            is_learner: false,
        }
    }

    fn status(id: u64, leader: u64, raft_index: u64, applied: u64) -> NodeStatus {
        NodeStatus {
            member_id: MemberId(id),
            leader: Some(MemberId(leader)),
            version: "3.4".to_owned(),
            revision: Revision(1),
            raft_term: 3,
            raft_index,
            raft_applied_index: applied,
            db_size: 0,
            is_learner: false,
            errors: Vec::new(),
        }
    }

    #[test]
    fn lag_is_the_leaders_index_minus_the_members_applied_index() {
        let members = [member(1), member(2), member(3)];
        let answers = vec![
            Ok(status(1, 2, 95, 90)),
            Ok(status(2, 2, 100, 100)),
            Err("connection refused".to_owned()),
        ];
        let rows = member_rows(&members, answers);
        assert_eq!(
            rows.iter().map(|row| row.leader).collect::<Vec<_>>(),
            [false, true, false]
        );
        assert_eq!(
            rows.iter().map(|row| row.lag).collect::<Vec<_>>(),
            [Some(10), Some(0), None]
        );
        assert_eq!(rows[2].error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn no_lag_without_an_answering_leader() {
        let members = [member(1), member(2)];
        let answers = vec![Ok(status(1, 2, 95, 90)), Err("timeout".to_owned())];
        let rows = member_rows(&members, answers);
        assert_eq!(rows[0].lag, None);
        assert!(rows[1].leader);
    }
}
