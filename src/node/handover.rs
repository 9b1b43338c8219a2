//! Leadership transfer as seen by the gRPC layer: start it in the driver, then wait on the
//! published status until the target leads (or a bound passes). Graceful shutdown of a leader
//! uses the same path toward its most up-to-date peer.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{ClientError, NodeHandle, NodeStatus, Request};
use crate::raft::{NodeId, Role, Term};

impl NodeHandle {
    /// Hands leadership to `target` and waits until this node sees it lead, at most `wait`.
    /// Returns the new leader's id and term.
    ///
    /// # Errors
    /// Not leader (a redirect), an unknown target ([`ClientError::Invalid`]),
    /// [`ClientError::TransferTimedOut`] after `wait`, overloaded or shutting down.
    pub async fn transfer_leadership(
        &self,
        target: NodeId,
        wait: Duration,
    ) -> Result<(NodeId, Term), ClientError> {
        let now = self.status();
        if now.id == target && now.role == Role::Leader {
            return Ok((target, now.term));
        }
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        self.submit(Request::TransferLeadership { target, reply })?;
        let term = rx.await.unwrap_or(Err(ClientError::ShuttingDown))?;
        let took_over = |s: &NodeStatus| s.term > term && s.leader == Some(target);
        match self.wait_status(wait, took_over).await {
            Some(s) if took_over(&s) => Ok((target, s.term)),
            Some(s) => Err(ClientError::TransferTimedOut {
                target,
                waited_ms: started.elapsed().as_millis(),
                leader: s.leader.unwrap_or(0),
            }),
            None => Err(ClientError::ShuttingDown),
        }
    }

    /// Graceful shutdown: if this node leads, hands leadership to its most up-to-date peer and
    /// waits until it no longer leads. Returns at once on a follower, and after `bound` in
    /// any case, even if the driver never answers.
    pub async fn hand_over(&self, bound: Duration) {
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        if self.submit(Request::HandOver { reply }).is_err() {
            return;
        }
        let Ok(Ok(Some((target, term)))) = tokio::time::timeout(bound, rx).await else {
            return;
        };
        let left = bound.saturating_sub(started.elapsed());
        let gone = |s: &NodeStatus| s.role != Role::Leader || s.term > term;
        match self.wait_status(left, gone).await {
            Some(s) if gone(&s) => info!(
                target,
                term = s.term,
                leader = ?s.leader,
                "handed leadership over before shutting down"
            ),
            _ => warn!(
                target,
                bound_ms = bound.as_millis() as u64,
                "leadership hand-over did not complete in time; shutting down anyway"
            ),
        }
    }

    /// Waits until the published status satisfies `done` or `wait` passes; returns the last
    /// status seen, or `None` if the driver is gone.
    async fn wait_status(
        &self,
        wait: Duration,
        done: impl Fn(&NodeStatus) -> bool,
    ) -> Option<NodeStatus> {
        let mut rx = self.watch_status();
        let waited = tokio::time::timeout(wait, async {
            rx.wait_for(|s| done(s)).await.map(|s| s.clone()).ok()
        })
        .await;
        match waited {
            Ok(found) => found,
            Err(_elapsed) => Some(self.status()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{channel, INBOX_CAPACITY};
    use std::time::{Duration, Instant};

    /// Regression (issue 12, item 4): the hand-over waited for the driver's answer without a
    /// bound, so a driver that never answers (stuck, or busy forever) hung graceful shutdown.
    #[tokio::test]
    async fn hand_over_returns_after_its_bound_when_the_driver_never_answers() {
        // The inbox is kept (the request and its reply channel stay alive) but never read.
        let (handle, _inbox) = channel(1, INBOX_CAPACITY);
        let started = Instant::now();
        let bound = Duration::from_millis(100);
        tokio::time::timeout(Duration::from_secs(5), handle.hand_over(bound))
            .await
            .expect("hand_over outlived its bound");
        assert!(started.elapsed() >= bound);
    }
}
