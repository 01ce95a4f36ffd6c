//! Client workloads shared by the fault tests.
//!
//! - [`WriteLoad`]: concurrent writers putting distinct keys under a prefix, remembering
//!   which puts were acknowledged (and when) and which may have happened; [`verify_acked`]
//!   then checks a member holds every acknowledged put with its value and nothing that was
//!   never written.
//! - [`RegisterWorkload`]: concurrent clients doing put / get / compare-and-set on a few
//!   keys against random members, recording a [`History`] for the linearizability checker.
//!   Every written value is unique, which keeps the check fast and its verdicts sharp.
//!
//! Outcomes are classified by [`CallError`]: a refused connection had no effect; a timeout
//! or any other error may or may not have taken effect and is recorded as such.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{self, CallError, Consistency, Kv};
use crate::linearizability::{Call, ClientId, History, Output};

/// Pause after a failed call before the next one, so a dead member is not hammered.
const BACKOFF: Range<Duration> = Duration::from_millis(10)..Duration::from_millis(40);

/// One acknowledged put.
#[derive(Clone, Debug)]
pub struct Ack {
    pub key: String,
    pub value: String,
    /// When the put was sent.
    pub invoked: Instant,
    /// When its acknowledgement arrived.
    pub acked: Instant,
    /// Index (into the endpoints given to the load) of the member that acknowledged it.
    pub endpoint: usize,
}

/// What a [`WriteLoad`] did.
#[derive(Clone, Debug, Default)]
pub struct WriteReport {
    /// Acknowledged puts, per writer in order.
    pub acked: Vec<Ack>,
    /// Every put that may have taken effect (acknowledged or unknown outcome): key → value.
    pub attempted: BTreeMap<String, String>,
    /// Puts with an unknown outcome (timeouts, errors after sending).
    pub unknown: usize,
    /// Puts refused before sending (the member was down).
    pub not_sent: usize,
}

impl WriteReport {
    /// Adds another report's writes (for loads run one after another).
    pub fn merge(&mut self, other: WriteReport) {
        self.acked.extend(other.acked);
        self.attempted.extend(other.attempted);
        self.unknown += other.unknown;
        self.not_sent += other.not_sent;
    }

    /// The earliest acknowledgement among puts sent at or after `instant`.
    pub fn first_ack_invoked_after(&self, instant: Instant) -> Option<&Ack> {
        self.acked
            .iter()
            .filter(|ack| ack.invoked >= instant)
            .min_by_key(|ack| ack.acked)
    }
}

/// Concurrent writers putting distinct keys `PREFIX/wNN/SEQ` until stopped.
pub struct WriteLoad {
    stop: watch::Sender<bool>,
    writers: Vec<JoinHandle<WriteReport>>,
}

impl WriteLoad {
    /// Starts `writers` tasks, each putting one key at a time to a random endpoint, every
    /// call bounded by `call_timeout`.
    pub fn start(
        endpoints: &[String],
        writers: usize,
        prefix: &str,
        call_timeout: Duration,
    ) -> anyhow::Result<WriteLoad> {
        anyhow::ensure!(!endpoints.is_empty(), "a write load needs an endpoint");
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::with_capacity(writers);
        for writer in 0..writers {
            let clients = endpoints
                .iter()
                .map(|e| client::kv(e))
                .collect::<anyhow::Result<Vec<Kv>>>()?;
            let prefix = format!("{prefix}/w{writer:02}");
            tasks.push(tokio::spawn(write_until_stopped(
                clients,
                prefix,
                call_timeout,
                stopped.clone(),
            )));
        }
        Ok(WriteLoad {
            stop,
            writers: tasks,
        })
    }

    /// Signals the writers to stop after their current put and collects what they did.
    pub async fn stop(self) -> anyhow::Result<WriteReport> {
        let _ = self.stop.send(true);
        let mut report = WriteReport::default();
        for writer in self.writers {
            report.merge(writer.await?);
        }
        Ok(report)
    }
}

async fn write_until_stopped(
    mut clients: Vec<Kv>,
    prefix: String,
    call_timeout: Duration,
    stopped: watch::Receiver<bool>,
) -> WriteReport {
    let mut rng = SmallRng::from_os_rng();
    let mut report = WriteReport::default();
    let mut seq = 0u64;
    while !*stopped.borrow() {
        let endpoint = rng.random_range(0..clients.len());
        let key = format!("{prefix}/{seq:07}");
        let value = format!("{key}={:016x}", rng.random::<u64>());
        seq += 1;
        let invoked = Instant::now();
        match client::put(&mut clients[endpoint], &key, &value, call_timeout).await {
            Ok(_) => {
                let acked = Instant::now();
                report.attempted.insert(key.clone(), value.clone());
                report.acked.push(Ack {
                    key,
                    value,
                    invoked,
                    acked,
                    endpoint,
                });
            }
            Err(err) => {
                if err.had_no_effect() {
                    report.not_sent += 1;
                } else {
                    report.unknown += 1;
                    report.attempted.insert(key, value);
                }
                tokio::time::sleep(rng.random_range(BACKOFF)).await;
            }
        }
    }
    report
}

/// The result of comparing a member's keys under a prefix with a [`WriteReport`].
#[derive(Clone, Debug, Default)]
pub struct AckCheck {
    /// Acknowledged puts checked.
    pub acked: usize,
    /// Keys found under the prefix.
    pub found: usize,
    /// Acknowledged keys that are absent.
    pub missing: Vec<String>,
    /// Keys whose value differs from the one written: (key, written, found).
    pub wrong_value: Vec<(String, String, String)>,
    /// Keys found that no put wrote.
    pub unexpected: Vec<String>,
}

impl AckCheck {
    /// Compares the keys `found` with what `report` says was written.
    pub fn compare(report: &WriteReport, found: &BTreeMap<String, String>) -> AckCheck {
        let mut check = AckCheck {
            acked: report.acked.len(),
            found: found.len(),
            ..AckCheck::default()
        };
        for ack in &report.acked {
            if !found.contains_key(&ack.key) {
                check.missing.push(ack.key.clone());
            }
        }
        for (key, value) in found {
            match report.attempted.get(key) {
                None => check.unexpected.push(key.clone()),
                Some(written) if written != value => {
                    check
                        .wrong_value
                        .push((key.clone(), written.clone(), value.clone()))
                }
                Some(_) => {}
            }
        }
        check
    }

    /// Whether every acknowledged put is present with its value and nothing else appeared.
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.wrong_value.is_empty() && self.unexpected.is_empty()
    }
}

impl fmt::Display for AckCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} acknowledged, {} keys found, {} missing, {} with a wrong value, {} never written",
            self.acked,
            self.found,
            self.missing.len(),
            self.wrong_value.len(),
            self.unexpected.len()
        )?;
        for key in self.missing.iter().take(10) {
            write!(f, "\n  missing: {key}")?;
        }
        for (key, written, found) in self.wrong_value.iter().take(10) {
            write!(
                f,
                "\n  wrong value: {key}: wrote {written:?}, found {found:?}"
            )?;
        }
        for key in self.unexpected.iter().take(10) {
            write!(f, "\n  never written: {key}")?;
        }
        Ok(())
    }
}

/// Reads every key under `prefix` from `endpoint` and compares it with `report`.
///
/// Call errors are retried until `within` has passed. A linearizable read is judged on
/// its first answer; a serializable one is retried until it passes or `within` has passed,
/// so a member that is still catching up gets the time to do so.
pub async fn verify_acked(
    endpoint: &str,
    prefix: &str,
    report: &WriteReport,
    consistency: Consistency,
    within: Duration,
) -> anyhow::Result<AckCheck> {
    let deadline = Instant::now() + within;
    let mut kv = client::kv(endpoint)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = left.clamp(Duration::from_millis(500), Duration::from_secs(10));
        match client::get_prefix(&mut kv, prefix, consistency, timeout).await {
            Ok(found) => {
                let check = AckCheck::compare(report, &found);
                if check.is_ok()
                    || consistency == Consistency::Linearizable
                    || Instant::now() >= deadline
                {
                    return Ok(check);
                }
            }
            Err(err) if Instant::now() >= deadline => {
                anyhow::bail!("reading {prefix} from {endpoint} kept failing for {within:?}: {err}")
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Concurrent register clients for the linearizability check; see the module docs.
#[derive(Clone, Debug)]
pub struct RegisterWorkload {
    /// Concurrent clients, each issuing one operation at a time.
    pub clients: usize,
    /// Keys, `PREFIX/k0 .. PREFIX/k{keys-1}`.
    pub keys: usize,
    /// Key prefix.
    pub prefix: String,
    /// Timeout of each call; a call that exceeds it has an unknown outcome.
    pub call_timeout: Duration,
    /// Pause between a client's operations, drawn uniformly (bounds the history's size).
    pub think: Range<Duration>,
    /// Share of reads; the rest is split evenly between puts and compare-and-sets.
    pub read_share: f64,
    /// Seed of the clients' random choices.
    pub seed: u64,
}

impl Default for RegisterWorkload {
    fn default() -> Self {
        RegisterWorkload {
            clients: 6,
            keys: 5,
            prefix: "lin".into(),
            call_timeout: Duration::from_secs(1),
            think: Duration::from_millis(10)..Duration::from_millis(40),
            read_share: 0.4,
            seed: 0,
        }
    }
}

/// Counts of what a [`RegisterWorkload`] run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterStats {
    /// Operations that returned.
    pub ok: usize,
    /// Writes (put or cas) with an unknown outcome.
    pub unknown: usize,
    /// Reads that failed (they are left out of the check).
    pub failed_reads: usize,
    /// Operations refused before sending.
    pub not_sent: usize,
    /// Compare-and-sets that applied.
    pub cas_applied: usize,
}

impl RegisterStats {
    fn merge(&mut self, other: &RegisterStats) {
        self.ok += other.ok;
        self.unknown += other.unknown;
        self.failed_reads += other.failed_reads;
        self.not_sent += other.not_sent;
        self.cas_applied += other.cas_applied;
    }
}

impl RegisterWorkload {
    /// Runs the clients against random `endpoints` for `duration` and returns the recorded
    /// history with counts.
    pub async fn run(
        &self,
        endpoints: &[String],
        duration: Duration,
    ) -> anyhow::Result<(History, RegisterStats)> {
        anyhow::ensure!(
            !endpoints.is_empty() && self.keys > 0,
            "a register workload needs endpoints and keys"
        );
        let history = Arc::new(Mutex::new(History::new()));
        let deadline = Instant::now() + duration;
        let mut tasks = Vec::with_capacity(self.clients);
        for client in 0..self.clients {
            let clients = endpoints
                .iter()
                .map(|e| client::kv(e))
                .collect::<anyhow::Result<Vec<Kv>>>()?;
            let recorder = Recorder {
                client: client as ClientId,
                history: Arc::clone(&history),
                endpoints: endpoints.to_vec(),
                member: 0,
            };
            tasks.push(tokio::spawn(
                self.clone().client_loop(recorder, clients, deadline),
            ));
        }
        let mut stats = RegisterStats::default();
        for task in tasks {
            stats.merge(&task.await?);
        }
        let history = std::mem::take(
            &mut *history
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        Ok((history, stats))
    }

    async fn client_loop(
        self,
        mut recorder: Recorder,
        mut clients: Vec<Kv>,
        deadline: Instant,
    ) -> RegisterStats {
        let mut rng = SmallRng::seed_from_u64(
            self.seed ^ recorder.client.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let mut stats = RegisterStats::default();
        // The value this client last saw per key: what its compare-and-sets expect.
        let mut last_seen: HashMap<String, Option<String>> = HashMap::new();
        let mut seq = 0u64;
        while Instant::now() < deadline {
            let key = format!("{}/k{}", self.prefix, rng.random_range(0..self.keys));
            let member = rng.random_range(0..clients.len());
            recorder.member = member;
            let kv = &mut clients[member];
            let value = format!("c{}-{seq}", recorder.client);
            seq += 1;
            let timeout = self.call_timeout;
            let outcome = if rng.random_bool(self.read_share) {
                let id = recorder.invoke(Call::Get { key: key.clone() });
                match client::get(kv, &key, Consistency::Linearizable, timeout).await {
                    Ok(seen) => {
                        recorder.returned(id, Output::Get(seen.clone()));
                        last_seen.insert(key, seen);
                        Ok(())
                    }
                    Err(err) => {
                        // A failed read has no effect; leave it out of the history.
                        recorder.failed(id);
                        stats.failed_reads += 1;
                        Err(err)
                    }
                }
            } else if rng.random_bool(0.5) {
                let id = recorder.invoke(Call::Put {
                    key: key.clone(),
                    value: value.clone(),
                });
                let result = client::put(kv, &key, &value, timeout).await;
                if result.is_ok() {
                    recorder.returned(id, Output::Put);
                    last_seen.insert(key, Some(value));
                }
                result
                    .map(drop)
                    .map_err(|err| recorder.write_failed(id, err, &mut stats))
            } else {
                let expected = last_seen.get(&key).cloned().flatten();
                let call = Call::Cas {
                    key: key.clone(),
                    expected: expected.clone(),
                    new: value.clone(),
                };
                let id = recorder.invoke(call);
                match client::cas(kv, &key, expected.as_deref(), &value, timeout).await {
                    Ok(applied) => {
                        recorder.returned(id, Output::Cas(applied));
                        if applied {
                            stats.cas_applied += 1;
                            last_seen.insert(key, Some(value));
                        }
                        Ok(())
                    }
                    Err(err) => Err(recorder.write_failed(id, err, &mut stats)),
                }
            };
            match outcome {
                Ok(()) => stats.ok += 1,
                Err(_) => tokio::time::sleep(rng.random_range(BACKOFF)).await,
            }
            if !self.think.is_empty() {
                tokio::time::sleep(rng.random_range(self.think.clone())).await;
            }
        }
        stats
    }
}

/// One client's handle on the shared history.
struct Recorder {
    client: ClientId,
    history: Arc<Mutex<History>>,
    endpoints: Vec<String>,
    /// Index of the endpoint the next operation goes to (noted on each operation).
    member: usize,
}

impl Recorder {
    fn with<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        f(&mut self
            .history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn invoke(&self, call: Call) -> usize {
        self.with(|history| {
            let id = history.invoke(self.client, call);
            history.annotate(id, format!("via {}", self.endpoints[self.member]));
            id
        })
    }

    fn returned(&self, id: usize, output: Output) {
        self.with(|history| history.returned(id, output));
    }

    fn failed(&self, id: usize) {
        self.with(|history| history.failed(id));
    }

    /// Records a failed write: no effect if it was never sent, else an unknown outcome.
    fn write_failed(&self, id: usize, err: CallError, stats: &mut RegisterStats) -> CallError {
        if err.had_no_effect() {
            self.failed(id);
            stats.not_sent += 1;
        } else {
            stats.unknown += 1;
        }
        err
    }
}
