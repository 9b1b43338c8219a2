//! Leased keys through the faults, and the check of how they ended.
//!
//! [`CLIENTS`] clients each grant leases one after another, attach one key to each
//! (`kl<client>-<N>`, under the watched prefix) and give each a fate, in turn: **kept** alive
//! by a [`LeaseKeeper`] to the end (at most [`MAX_KEPT`] at once per client: past that the
//! oldest keeper is dropped and its lease lapses), **lapsed** (never renewed: it runs out), or **revoked** a moment later. Kept and
//! revoked leases ask for a few seconds, lapsing ones for the cluster's minimum (etcd's
//! ceil(1.5 × election timeout)).
//!
//! At the end, once the faults stopped:
//! - a lease still kept whose keeper never heard "gone" must be alive (TimeToLive) and its
//!   key present; a kept lease that is gone must be reported lost by its keeper (it ran out
//!   under the faults: counted, not a failure);
//! - every other lease (lapsed, revoked, lost, or whose put or revoke had an unknown
//!   outcome) must be gone within `--settle` seconds (TimeToLive -1: expired or revoked), and
//!   its key with it;
//! - the watch check then requires the acknowledged puts and revokes at their revisions and
//!   a delete of every key that must be gone (see `watchers`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore::client::{Client, ClientOptions, Consistency, LeaseKeeper};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::{at, Shared};

/// Lease clients (two, so that a client stuck on a frozen leader does not leave a short run
/// with nothing to check).
pub const CLIENTS: usize = 2;
/// Leases kept alive at once by one client, at most.
pub const MAX_KEPT: usize = 3;
/// Extra seconds over the minimum TTL for kept and revoked leases, so a renewal or a revoke
/// usually beats the expiry even across a change of leader.
const LONG_TTL_EXTRA: i64 = 2;

/// How a lease ends.
#[derive(Debug)]
pub enum Fate {
    /// Renewed until the end by this keeper.
    Kept(LeaseKeeper),
    /// Never renewed (or no longer: its keeper was dropped), or its revoke's outcome is
    /// unknown: it runs out.
    Lapsed,
    /// Revoked, acknowledged at this revision.
    Revoked(i64),
    /// Kept, but its keeper heard it was gone (it ran out under the faults).
    Lost,
}

impl Fate {
    fn name(&self) -> &'static str {
        match self {
            Fate::Kept(_) => "kept alive",
            Fate::Lapsed => "lapsed",
            Fate::Revoked(_) => "revoked",
            Fate::Lost => "lost under the faults",
        }
    }
}

/// One granted lease and its key.
#[derive(Debug)]
pub struct Leased {
    pub id: i64,
    pub key: String,
    /// The value identity put (`l<N>`).
    pub value: String,
    /// The put's revision, if it was acknowledged.
    pub put_revision: Option<i64>,
    pub fate: Fate,
}

/// What the lease client did.
#[derive(Debug, Default)]
pub struct LeaseRun {
    pub leases: Vec<Leased>,
    /// Grants acknowledged, and the TTLs the cluster gave.
    pub granted: u64,
    pub ttls: BTreeMap<i64, u64>,
    /// Keepers dropped mid-run (their lease lapsed).
    pub released: u64,
    /// Revokes that failed: not found (it had run out first) or an unknown outcome.
    pub revoke_failed: u64,
    /// The self-test's sabotage: the keeper of a lease claimed expired, still renewing it.
    pub claimed_expired: Option<LeaseKeeper>,
}

impl LeaseRun {
    /// Adds what another lease client did.
    pub fn merge(&mut self, other: LeaseRun) {
        self.leases.extend(other.leases);
        self.granted += other.granted;
        for (ttl, n) in other.ttls {
            *self.ttls.entry(ttl).or_default() += n;
        }
        self.released += other.released;
        self.revoke_failed += other.revoke_failed;
    }
}

/// Lease client `idx`: grants, attaches, keeps, lets lapse and revokes until `shared.stop`.
pub async fn lease_loop(
    idx: usize,
    endpoints: Vec<String>,
    min_ttl: i64,
    seed: u64,
    shared: Arc<Shared>,
) -> LeaseRun {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut run = LeaseRun::default();
    let Ok(mut client) = Client::with_options(
        endpoints,
        ClientOptions::with_timeout(Duration::from_secs(3)),
    ) else {
        return run;
    };
    let mut n = 0u64;
    let mut generation = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        if let Some(endpoints) = shared.endpoints_since(&mut generation) {
            // The members changed (`--membership`): new leases go through the current ones
            // (the keepers already running keep their client).
            if let Ok(c) = Client::with_options(
                endpoints,
                ClientOptions::with_timeout(Duration::from_secs(3)),
            ) {
                client = c;
            }
        }
        n += 1;
        // Kept, lapsed, revoked, in turn.
        let turn = n % 3;
        let ttl = if turn == 2 {
            min_ttl
        } else {
            min_ttl + LONG_TTL_EXTRA
        };
        let lease = match client.grant_lease(ttl, 0).await {
            Ok(lease) => lease,
            Err(_) => continue,
        };
        run.granted += 1;
        *run.ttls.entry(lease.ttl).or_default() += 1;
        let key = format!("kl{idx}-{n}");
        let value = format!("l{idx}-{n}");
        let put_revision = match client.put_with_lease(&key, &value, lease.id).await {
            Ok(h) => Some(h.revision),
            Err(_) => None,
        };
        let fate = match turn {
            1 if put_revision.is_some() => match client.keep_lease_alive(lease.id) {
                Ok(keeper) => Fate::Kept(keeper),
                Err(_) => Fate::Lapsed,
            },
            0 => {
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
                match client.revoke_lease(lease.id).await {
                    Ok(h) => Fate::Revoked(h.revision),
                    Err(_) => {
                        run.revoke_failed += 1;
                        Fate::Lapsed
                    }
                }
            }
            _ => Fate::Lapsed,
        };
        run.leases.push(Leased {
            id: lease.id,
            key,
            value,
            put_revision,
            fate,
        });
        let kept: Vec<usize> = (0..run.leases.len())
            .filter(|&i| matches!(run.leases[i].fate, Fate::Kept(_)))
            .collect();
        if kept.len() > MAX_KEPT {
            // Dropping the keeper stops the renewals: the lease runs out.
            run.leases[kept[0]].fate = Fate::Lapsed;
            run.released += 1;
            println!(
                "{} lease {} of {}: keeper dropped, it lapses",
                at(shared.start),
                run.leases[kept[0]].id,
                run.leases[kept[0]].key
            );
        }
    }
    run
}

/// The end of the lease check: what each lease's key must be, and what held.
#[derive(Debug, Default)]
pub struct LeaseEnd {
    /// Kept to the end: alive, key present.
    pub kept: u64,
    /// Lapsed and run out (including dropped keepers and revokes of unknown outcome).
    pub expired: u64,
    /// Revoked (acknowledged).
    pub revoked: u64,
    /// Kept, but run out under the faults.
    pub lost: u64,
    /// Seconds it took the last key that had to go to be gone.
    pub gone_after: f64,
}

/// The self-test's sabotages of the lease check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// One lease kept alive to the end is claimed expired (its key must then be gone).
    ClaimKeptExpired,
    /// One lease that expired is claimed kept alive (its key must then be present).
    ClaimExpiredKept,
}

/// Settles every lease (see the module doc): failures are returned as one line each.
pub async fn check_end(
    run: &mut LeaseRun,
    endpoints: &[String],
    bound: Duration,
    sabotage: Option<Sabotage>,
    start: Instant,
) -> (LeaseEnd, Vec<String>) {
    let mut end = LeaseEnd::default();
    let mut failures = Vec::new();
    let mut client = match Client::with_options(
        endpoints.to_vec(),
        ClientOptions::with_timeout(Duration::from_secs(10)),
    ) {
        Ok(c) => c,
        Err(e) => return (end, vec![format!("no client: {e}")]),
    };
    // Kept leases: alive, or lost and known to be by their keeper.
    for l in &mut run.leases {
        let Fate::Kept(keeper) = &mut l.fate else {
            continue;
        };
        if keeper.last_ttl() == Some(0) {
            l.fate = Fate::Lost;
            continue;
        }
        match client.lease_time_to_live(l.id, false).await {
            Ok(t) if t.ttl > 0 => {}
            Ok(t) => {
                let noticed = tokio::time::timeout(Duration::from_secs(5), keeper.lost())
                    .await
                    .is_ok();
                if noticed {
                    l.fate = Fate::Lost;
                } else {
                    failures.push(format!(
                        "lease {} of {} is gone (TimeToLive {}), but its keeper still renews it (last ttl {:?})",
                        l.id,
                        l.key,
                        t.ttl,
                        keeper.last_ttl()
                    ));
                }
            }
            Err(e) => failures.push(format!("TimeToLive of lease {} failed: {e}", l.id)),
        }
    }
    if sabotage == Some(Sabotage::ClaimKeptExpired) {
        if let Some(l) = run
            .leases
            .iter_mut()
            .find(|l| matches!(l.fate, Fate::Kept(_)))
        {
            println!(
                "{} self-test: claiming lease {} of {} (kept alive) expired",
                at(start),
                l.id,
                l.key
            );
            // The keeper lives on: the lease stays alive.
            if let Fate::Kept(keeper) = std::mem::replace(&mut l.fate, Fate::Lapsed) {
                run.claimed_expired = Some(keeper);
            }
        }
    }
    // Every lease not kept must go, and its key with it.
    let started = Instant::now();
    let mut pending: Vec<(&Leased, String)> = run
        .leases
        .iter()
        .filter(|l| !matches!(l.fate, Fate::Kept(_)))
        .map(|l| (l, String::new()))
        .collect();
    loop {
        let mut still = Vec::new();
        for (l, _) in pending {
            let key = client.get(&l.key, Consistency::Linearizable).await;
            let lease = client.lease_time_to_live(l.id, false).await;
            match (key, lease) {
                (Ok(g), Ok(t)) if g.value.is_none() && t.ttl == -1 => {}
                (Ok(g), Ok(_)) if g.value.is_some() => {
                    still.push((l, format!("{} is still present", l.key)));
                }
                (Ok(_), Ok(t)) => {
                    still.push((
                        l,
                        format!(
                            "{} is gone but the lease is not (TimeToLive {})",
                            l.key, t.ttl
                        ),
                    ));
                }
                (Err(e), _) | (_, Err(e)) => {
                    failures.push(format!("reading {} and lease {}: {e}", l.key, l.id));
                }
            }
        }
        pending = still;
        if pending.is_empty() || started.elapsed() >= bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    end.gone_after = started.elapsed().as_secs_f64();
    for (l, what) in pending {
        failures.push(format!(
            "lease {} ({}): {what} after {:.1} s of waiting for it to go (up to --settle)",
            l.id,
            l.fate.name(),
            end.gone_after
        ));
    }
    if sabotage == Some(Sabotage::ClaimExpiredKept) {
        let gone = run
            .leases
            .iter_mut()
            .find(|l| matches!(l.fate, Fate::Lapsed) && l.put_revision.is_some());
        if let Some(l) = gone {
            println!(
                "{} self-test: claiming lease {} of {} (expired) kept alive",
                at(start),
                l.id,
                l.key
            );
            match client.keep_lease_alive(l.id) {
                Ok(keeper) => l.fate = Fate::Kept(keeper),
                Err(e) => failures.push(format!("self-test: no keeper: {e}")),
            }
        }
    }
    // Every key whose lease is kept must stay.
    for l in &run.leases {
        match &l.fate {
            Fate::Kept(keeper) => {
                end.kept += 1;
                match client.get(&l.key, Consistency::Linearizable).await {
                    Ok(g) if g.value.is_some() => {}
                    Ok(_) => failures.push(format!(
                        "{} of lease {} is absent, though the lease was kept alive to the end (last renewal ttl {:?})",
                        l.key,
                        l.id,
                        keeper.last_ttl()
                    )),
                    Err(e) => failures.push(format!("linearizable read of {} failed: {e}", l.key)),
                }
            }
            Fate::Lapsed => end.expired += 1,
            Fate::Revoked(_) => end.revoked += 1,
            Fate::Lost => end.lost += 1,
        }
    }
    (end, failures)
}
