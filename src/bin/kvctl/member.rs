//! kvctl's `member` commands: list, add, remove, promote, update (etcdctl's names), with a
//! plain table or one JSON object (`-w json`).

use std::process::ExitCode;

use clap::Subcommand;
use kvstore::client::Client;
use kvstore::pb;
use serde::Serialize;

use super::Failure;

/// `kvctl member ...`.
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Print every member: `ID ROLE PEER_ADDRESS LAG` (the lag, in log entries, as the leader
    /// sees it; `-` when the answering node does not lead).
    List,
    /// Add a member at PEER_ADDRESS (HOST:PORT of its gRPC server); prints its new id. Then
    /// start it with `kvstore --id ID --join <a member's address> ...`.
    Add {
        /// HOST:PORT where the other members will reach it.
        peer_address: String,
        /// Add it as a learner (receives the log, does not vote; promote it once caught up).
        #[arg(long)]
        learner: bool,
    },
    /// Remove member ID for good (its id is never used again).
    Remove {
        /// The member.
        id: u64,
        /// Remove it even if the remaining voters have no live quorum.
        #[arg(long)]
        force: bool,
    },
    /// Make learner ID a voter (refused until it is nearly caught up).
    Promote {
        /// The learner.
        id: u64,
    },
    /// Change member ID's peer address.
    Update {
        /// The member.
        id: u64,
        /// Its new HOST:PORT.
        peer_address: String,
    },
}

/// One member in `-w json` output.
#[derive(Serialize)]
struct JsonMember {
    id: u64,
    role: &'static str,
    peer_address: String,
    /// Present only in a leader's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    lag: Option<u64>,
}

impl From<&pb::Member> for JsonMember {
    fn from(m: &pb::Member) -> Self {
        JsonMember {
            id: m.id,
            role: role(m),
            peer_address: m.peer_address.clone(),
            lag: m.has_progress.then_some(m.lag),
        }
    }
}

/// One `-w json` answer.
#[derive(Serialize)]
struct JsonMembers {
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    added: Option<u64>,
    members: Vec<JsonMember>,
}

fn role(m: &pb::Member) -> &'static str {
    if m.member_role == pb::MemberRole::Learner as i32 {
        "learner"
    } else {
        "voter"
    }
}

/// Runs a `member` command.
pub async fn run_member(
    client: &mut Client,
    command: MemberCommand,
    json: bool,
) -> Result<ExitCode, Failure> {
    let (cluster_id, added, members) = match command {
        MemberCommand::List => {
            let r = client.member_list().await?;
            (Some(format!("{:016x}", r.cluster_id)), None, r.members)
        }
        MemberCommand::Add {
            peer_address,
            learner,
        } => {
            let r = client.member_add(&peer_address, learner).await?;
            let id = r.member.as_ref().map_or(0, |m| m.id);
            if !json {
                let what = if learner { "learner" } else { "voter" };
                println!("added member {id} as a {what} at {peer_address}");
            }
            (None, Some(id), r.members)
        }
        MemberCommand::Remove { id, force } => {
            let r = client.member_remove(id, force).await?;
            if !json {
                println!("removed member {id}");
            }
            (None, None, r.members)
        }
        MemberCommand::Promote { id } => {
            let r = client.member_promote(id).await?;
            if !json {
                println!("promoted member {id} to voter");
            }
            (None, None, r.members)
        }
        MemberCommand::Update { id, peer_address } => {
            let r = client.member_update(id, &peer_address).await?;
            if !json {
                println!("updated member {id} to {peer_address}");
            }
            (None, None, r.members)
        }
    };
    if json {
        let answer = JsonMembers {
            cluster_id,
            added,
            members: members.iter().map(JsonMember::from).collect(),
        };
        let line = serde_json::to_string(&answer)
            .map_err(|e| Failure::new(format!("cannot print the answer as JSON: {e}")))?;
        println!("{line}");
    } else if cluster_id.is_some() {
        print!("{}", table(&members));
    }
    Ok(ExitCode::SUCCESS)
}

/// `ID ROLE PEER_ADDRESS LAG`, whitespace-aligned.
fn table(members: &[pb::Member]) -> String {
    let mut rows = vec![["ID", "ROLE", "PEER_ADDRESS", "LAG"].map(String::from)];
    for m in members {
        rows.push([
            m.id.to_string(),
            role(m).to_string(),
            m.peer_address.clone(),
            if m.has_progress {
                m.lag.to_string()
            } else {
                "-".to_string()
            },
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_roles_and_lag_where_known() {
        let m = |id, role: pb::MemberRole, lag: Option<u64>| pb::Member {
            id,
            peer_address: format!("127.0.0.1:900{id}"),
            member_role: role as i32,
            has_progress: lag.is_some(),
            matched_index: 0,
            lag: lag.unwrap_or(0),
        };
        let t = table(&[
            m(1, pb::MemberRole::Voter, Some(0)),
            m(4, pb::MemberRole::Learner, None),
        ]);
        assert_eq!(
            t,
            "ID  ROLE     PEER_ADDRESS    LAG\n1   voter    127.0.0.1:9001  0\n4   learner  127.0.0.1:9004  -\n"
        );
    }
}
