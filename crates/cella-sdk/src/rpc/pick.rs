//! Balancing decisions, apart from any I/O: which endpoint a call goes to.
//!
//! Locality first ([`Locality`]): only the nearest non-empty tier of the caller's topology
//! (same cell → same zone → same region → anywhere) is considered. Within it the
//! [`BalancePolicy`] picks: power of two choices on peak-EWMA latency × in-flight (default),
//! round robin, weighted random, or rendezvous (consistent) hashing on the routing key.
//! Every function here is a plain computation; randomness is passed in.

use std::collections::BTreeMap;
use std::time::Duration;

/// How a call picks among the endpoints of its locality tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BalancePolicy {
    /// Two random endpoints; the one with the lower latency × (in-flight + 1) wins.
    #[default]
    PeakEwma,
    /// Each endpoint in turn.
    RoundRobin,
    /// Random, in proportion to the instances' weights.
    Weighted,
    /// The same routing key goes to the same endpoint while it exists (rendezvous hashing);
    /// calls without a key fall back to `PeakEwma`.
    ConsistentHash,
}

/// Which endpoints are near enough to take a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Locality {
    /// The nearest tier that has an available endpoint: cell, then zone, then region, then
    /// anywhere.
    #[default]
    Nearest,
    /// Every endpoint alike.
    Anywhere,
}

/// The caller's place in the topology, compared with the instances' labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Region label.
    pub region: Option<String>,
    /// Zone label.
    pub zone: Option<String>,
    /// Cell label.
    pub cell: Option<String>,
}

impl Topology {
    /// The topology named by `region`, `zone` and `cell` labels.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Topology {
        let get = |key: &str| labels.get(key).filter(|v| !v.is_empty()).cloned();
        Topology {
            region: get("region"),
            zone: get("zone"),
            cell: get("cell"),
        }
    }

    /// How far an endpoint at `other` is: 0 same cell, 1 same zone, 2 same region,
    /// 3 anywhere else.
    pub(crate) fn distance(&self, other: &Topology) -> u8 {
        let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
        if same(&self.cell, &other.cell) {
            0
        } else if same(&self.zone, &other.zone) {
            1
        } else if same(&self.region, &other.region) {
            2
        } else {
            3
        }
    }
}

/// What the balancer knows of one endpoint when it picks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    /// Stable hash of the endpoint's id (for rendezvous hashing).
    pub key: u64,
    /// Instance weight (0 never picked by `Weighted` unless all are 0).
    pub weight: f64,
    /// Calls in flight.
    pub in_flight: usize,
    /// Peak-EWMA latency estimate, in nanoseconds.
    pub latency_ns: f64,
    /// Topology distance from the caller.
    pub distance: u8,
    /// Not ejected.
    pub available: bool,
}

/// Indexes of the candidates a call may go to: the available ones (all, if none is) of the
/// nearest tier that has any.
pub(crate) fn eligible(candidates: &[Candidate], locality: Locality) -> Vec<usize> {
    let pool: Vec<usize> = {
        let available: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].available)
            .collect();
        // Ejecting every endpoint would fail every call: keep trying them all instead.
        if available.is_empty() {
            (0..candidates.len()).collect()
        } else {
            available
        }
    };
    match locality {
        Locality::Anywhere => pool,
        Locality::Nearest => {
            let nearest = pool.iter().map(|&i| candidates[i].distance).min();
            pool.into_iter()
                .filter(|&i| Some(candidates[i].distance) == nearest)
                .collect()
        }
    }
}

/// Random numbers a pick may use, drawn by the caller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dice {
    /// Uniform in `0..u64::MAX`.
    pub a: u64,
    /// Uniform in `0..u64::MAX`, independent of `a`.
    pub b: u64,
}

/// Picks one of `candidates`; `None` when there are none. `turn` is the round-robin counter.
pub(crate) fn pick(
    candidates: &[Candidate],
    policy: BalancePolicy,
    locality: Locality,
    key: Option<&str>,
    turn: u64,
    dice: Dice,
) -> Option<usize> {
    let pool = eligible(candidates, locality);
    if pool.is_empty() {
        return None;
    }
    let n = pool.len() as u64;
    let chosen = match (policy, key) {
        (BalancePolicy::RoundRobin, _) => pool[(turn % n) as usize],
        (BalancePolicy::Weighted, _) => pick_weighted(candidates, &pool, dice.a),
        (BalancePolicy::ConsistentHash, Some(key)) => {
            let key = fnv1a(key.as_bytes());
            *pool
                .iter()
                .max_by_key(|&&i| mix(key ^ candidates[i].key))
                .expect("pool is not empty")
        }
        (BalancePolicy::PeakEwma | BalancePolicy::ConsistentHash, _) => {
            if n == 1 {
                return Some(pool[0]);
            }
            let first = (dice.a % n) as usize;
            // A second, different index.
            let second = (first + 1 + (dice.b % (n - 1)) as usize) % pool.len();
            let (a, b) = (pool[first], pool[second]);
            if cost(&candidates[b]) < cost(&candidates[a]) {
                b
            } else {
                a
            }
        }
    };
    Some(chosen)
}

/// Peak-EWMA load: expected latency scaled by the queue the call would join.
fn cost(candidate: &Candidate) -> f64 {
    candidate.latency_ns * (candidate.in_flight as f64 + 1.0)
}

fn pick_weighted(candidates: &[Candidate], pool: &[usize], die: u64) -> usize {
    let total: f64 = pool.iter().map(|&i| candidates[i].weight.max(0.0)).sum();
    if total <= 0.0 {
        return pool[(die % pool.len() as u64) as usize];
    }
    let mut point = (die as f64 / u64::MAX as f64) * total;
    for &i in pool {
        point -= candidates[i].weight.max(0.0);
        if point < 0.0 {
            return i;
        }
    }
    *pool.last().expect("pool is not empty")
}

/// FNV-1a, 64 bit: a hash that every client computes alike.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A 64-bit finalizer (splitmix64's) so rendezvous scores are well spread.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A peak-EWMA latency estimate: a slower observation replaces it at once; faster ones pull
/// it down gradually; without observations it decays toward zero, so a slow endpoint is
/// tried again after a while.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PeakEwma {
    /// Estimate in nanoseconds, as of `stamp`.
    pub estimate_ns: f64,
    /// When the estimate was last updated.
    pub stamp: Duration,
}

impl PeakEwma {
    /// A fresh estimate of `initial`.
    pub fn new(initial: Duration, now: Duration) -> PeakEwma {
        PeakEwma {
            estimate_ns: initial.as_nanos() as f64,
            stamp: now,
        }
    }

    /// The estimate at `now`, decayed since the last update with time constant `tau`.
    pub fn at(&self, now: Duration, tau: Duration) -> f64 {
        self.estimate_ns * decay(now.saturating_sub(self.stamp), tau)
    }

    /// Folds in an observed latency.
    pub fn observe(&mut self, latency: Duration, now: Duration, tau: Duration) {
        let rtt = latency.as_nanos() as f64;
        let current = self.at(now, tau);
        self.estimate_ns = if rtt > current {
            rtt
        } else {
            let d = decay(now.saturating_sub(self.stamp), tau);
            current * d + rtt * (1.0 - d)
        };
        self.stamp = now;
    }
}

fn decay(elapsed: Duration, tau: Duration) -> f64 {
    let tau = tau.as_secs_f64().max(1e-9);
    (-elapsed.as_secs_f64() / tau).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(key: u64) -> Candidate {
        Candidate {
            key,
            weight: 1.0,
            in_flight: 0,
            latency_ns: 1_000_000.0,
            distance: 3,
            available: true,
        }
    }

    fn dice(a: u64, b: u64) -> Dice {
        Dice { a, b }
    }

    #[test]
    fn p2c_takes_the_cheaper_of_two_and_never_the_same_twice() {
        let mut c = vec![candidate(1), candidate(2), candidate(3)];
        c[1].latency_ns = 50_000_000.0;
        // Whatever the dice, the slow endpoint loses to the other pick.
        for a in 0..30u64 {
            for b in 0..30u64 {
                let chosen = pick(
                    &c,
                    BalancePolicy::PeakEwma,
                    Locality::Anywhere,
                    None,
                    0,
                    dice(a, b),
                );
                assert_ne!(chosen, Some(1), "dice {a},{b}");
            }
        }
        // In-flight calls count too: a loaded fast endpoint loses to an idle one.
        c[1].latency_ns = 1_000_000.0;
        c[0].in_flight = 4;
        assert_eq!(
            pick(
                &c,
                BalancePolicy::PeakEwma,
                Locality::Anywhere,
                None,
                0,
                dice(0, 0)
            ),
            Some(1)
        );
    }

    #[test]
    fn round_robin_visits_each_in_turn() {
        let c = vec![candidate(1), candidate(2), candidate(3)];
        let picks: Vec<_> = (0..6)
            .map(|turn| {
                pick(
                    &c,
                    BalancePolicy::RoundRobin,
                    Locality::Anywhere,
                    None,
                    turn,
                    dice(0, 0),
                )
            })
            .map(Option::unwrap)
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_follows_the_weights() {
        let mut c = vec![candidate(1), candidate(2)];
        c[0].weight = 3.0;
        c[1].weight = 1.0;
        let steps = 1000u64;
        let first = (0..steps)
            .map(|i| dice(i * (u64::MAX / steps), 0))
            .filter(|&d| {
                pick(&c, BalancePolicy::Weighted, Locality::Anywhere, None, 0, d) == Some(0)
            })
            .count();
        assert_eq!(first, 750);
        c[0].weight = 0.0;
        assert_eq!(
            pick(
                &c,
                BalancePolicy::Weighted,
                Locality::Anywhere,
                None,
                0,
                dice(1, 0)
            ),
            Some(1)
        );
    }

    #[test]
    fn consistent_hash_moves_only_the_keys_of_a_removed_endpoint() {
        let all: Vec<Candidate> = (0..5)
            .map(|i| candidate(fnv1a(format!("10.0.0.{i}").as_bytes())))
            .collect();
        let keys: Vec<String> = (0..500).map(|i| format!("user-{i}")).collect();
        let owner = |c: &[Candidate], key: &str| {
            let i = pick(
                c,
                BalancePolicy::ConsistentHash,
                Locality::Anywhere,
                Some(key),
                0,
                dice(0, 0),
            )
            .unwrap();
            c[i].key
        };
        let before: Vec<u64> = keys.iter().map(|k| owner(&all, k)).collect();
        // Every endpoint owns some keys.
        for c in &all {
            assert!(before.contains(&c.key));
        }
        let removed = all[2].key;
        let fewer: Vec<Candidate> = all.iter().filter(|c| c.key != removed).cloned().collect();
        for (key, was) in keys.iter().zip(&before) {
            let now = owner(&fewer, key);
            if *was != removed {
                assert_eq!(now, *was, "{key} moved although its endpoint stayed");
            }
        }
    }

    #[test]
    fn locality_prefers_the_nearest_tier_and_falls_back() {
        let caller = Topology {
            region: Some("eu".into()),
            zone: Some("eu-1".into()),
            cell: Some("c1".into()),
        };
        let at = |region: &str, zone: &str, cell: &str| Topology {
            region: Some(region.into()),
            zone: Some(zone.into()),
            cell: Some(cell.into()),
        };
        assert_eq!(caller.distance(&at("eu", "eu-1", "c1")), 0);
        assert_eq!(caller.distance(&at("eu", "eu-1", "c2")), 1);
        assert_eq!(caller.distance(&at("eu", "eu-2", "c3")), 2);
        assert_eq!(caller.distance(&at("us", "us-1", "c4")), 3);
        assert_eq!(caller.distance(&Topology::default()), 3);

        let mut c: Vec<Candidate> = [3, 1, 2, 1]
            .iter()
            .enumerate()
            .map(|(i, &d)| Candidate {
                distance: d,
                ..candidate(i as u64)
            })
            .collect();
        assert_eq!(eligible(&c, Locality::Nearest), vec![1, 3]);
        assert_eq!(eligible(&c, Locality::Anywhere), vec![0, 1, 2, 3]);
        // The zone's endpoints are ejected: the region takes over.
        c[1].available = false;
        c[3].available = false;
        assert_eq!(eligible(&c, Locality::Nearest), vec![2]);
        // Everything ejected: try everything, nearest first.
        c[0].available = false;
        c[2].available = false;
        assert_eq!(eligible(&c, Locality::Nearest), vec![1, 3]);
        assert_eq!(eligible(&[], Locality::Nearest), Vec::<usize>::new());
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let tau = Duration::from_secs(1);
        let mut e = PeakEwma::new(Duration::from_millis(1), Duration::ZERO);
        e.observe(Duration::from_millis(40), Duration::from_millis(10), tau);
        assert_eq!(e.estimate_ns, 40_000_000.0);
        // A fast answer soon after moves it only a little.
        e.observe(Duration::from_millis(1), Duration::from_millis(20), tau);
        assert!(e.estimate_ns > 38_000_000.0 && e.estimate_ns < 40_000_000.0);
        // Unobserved, it fades: after 5 tau it is under 1 % of itself.
        let later = e.at(Duration::from_millis(5_020), tau);
        assert!(later < e.estimate_ns / 100.0);
    }
}
