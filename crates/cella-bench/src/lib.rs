//! `cella bench`: one etcd v3 client that measures Cella and its peers side by side.
//!
//! A run is one workload at one or more client levels against one or more named targets.
//! At each level every target is measured in turn (the order rotates from level to level so
//! drift hits all targets alike; `--rounds N` splits a level into N such turns, merged per
//! target, for comparisons on a machine whose speed drifts); each measurement sets up its
//! clients, warms up, then runs the shared load loop bounded by both time and operation count. The result is a markdown
//! section (printed, and appended to `--out`) with throughput, latency percentiles and
//! errors per target and level, and ratios to the baseline target (`etcd` by default).
//!
//! - [`args`]: the command-line options and their parsers.
//! - `driver`: the one load loop every workload uses.
//! - `workloads`: kv-put, kv-get, txn-cas, lease-keepalive, watch-fanout, lock-cycle,
//!   registry-push, registry-register, registry-heartbeat, registry-heartbeat-grpc,
//!   rpc-overhead, sidecar-hop, id-batch, id-single, config-push, config-read,
//!   config-publish-nacos, config-read-nacos, mq-produce, mq-consume, mq-e2e (the mq ones
//!   also against NATS JetStream and RabbitMQ, by the target's scheme). rpc-overhead and
//!   sidecar-hop measure paths to one target side by side (their "targets" in the report
//!   are the paths; sidecar-hop adds a path per `--proxies` reverse proxy).
//! - `usage`: the server process's CPU share and memory (`--server-pid`).
//! - `stats`, `report`, `progress`: histograms and ratios, the markdown section, the
//!   stderr progress line.

#![warn(missing_docs)]

pub mod args;
mod conn;
mod driver;
mod http;
mod progress;
mod report;
mod stats;
mod usage;
mod workloads;

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context;

pub use args::{BenchArgs, Workload};

use crate::args::format_duration;
use crate::conn::Connections;
use crate::driver::{Bounds, GRACE};
use crate::progress::Progress;
use crate::report::{Machine, Report};
use crate::stats::{ErrorTally, LevelResult, Measurement};
use crate::workloads::Settings;

/// Time a measurement may spend on setup and teardown (connect, preload, grants, watches)
/// on top of its warm-up and measured run before it is abandoned.
const SETUP_ALLOWANCE: Duration = Duration::from_secs(60);

/// Runs the benchmark described by `args`, printing the result section to stdout.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let settings = Settings {
        bounds: Bounds {
            duration: args.duration,
            count: args.count,
            rate: args.rate,
        },
        warmup: args.warmup,
        value_size: args.value_size as usize,
        key_space: u64::from(args.key_space),
        serializable: args.serializable,
        streams: args.streams as usize,
        one_lock: args.one_lock,
        id_layout: args.id_layout.clone(),
        id_batch: args.id_batch,
        instances: args.instances,
        beat_batch: args.beat_batch,
        server_pid: args.server_pid,
        connections: args.connections as usize,
        message_size: args.message_size as usize,
        flush: args.flush,
        queues: args.queues,
        backlog: args.backlog,
        consumers: args.consumers as usize,
        batch: args.batch as usize,
        app_port: args.app_port,
        proxies: args.proxies.clone().map(|p| p.0).unwrap_or_default(),
    };
    let date = report::utc_now();
    let machine = Machine::this();

    let mut targets = Vec::new();
    for target in &args.targets.0 {
        if args.workload.uses_http() {
            let conns = Connections::http(target)?;
            targets.push((target, conns, "n/a (Nacos HTTP API)".to_string()));
            continue;
        }
        if args.workload.is_mq() {
            let conns = match args::Broker::of(&target.uri).map_err(anyhow::Error::msg)? {
                args::Broker::Cella => Connections::open(target, args.connections).await?,
                args::Broker::Nats | args::Broker::Rabbitmq => Connections::http(target)?,
            };
            let version = match workloads::mq::server_version(&conns).await {
                Ok(v) => v,
                Err(e) => format!("unknown ({})", e.root_cause()),
            };
            targets.push((target, conns, version));
            continue;
        }
        let conns = Connections::open(target, args.connections).await?;
        let version = match conns.server_version().await {
            Ok(v) if !v.is_empty() => v,
            Ok(_) => "unknown (empty)".to_string(),
            Err(e) => format!("unknown ({})", e.root_cause()),
        };
        targets.push((target, conns, version));
    }

    // Workloads that compare two paths to one server measure the paths instead of targets.
    let paths = match targets.as_slice() {
        [(target, _, _)] => workloads::Paths::open(args.workload, target, &settings).await?,
        _ if matches!(args.workload, Workload::RpcOverhead | Workload::SidecarHop) => {
            anyhow::bail!(
                "{} takes one target (the registry node)",
                args.workload.name()
            )
        }
        _ => None,
    };
    // (name, address or description, server version) of what is measured.
    let measured_units: Vec<(String, String, String)> = match &paths {
        Some(paths) => paths
            .describe(targets[0].0)
            .into_iter()
            .map(|(name, what)| (name, what, targets[0].2.clone()))
            .collect(),
        None => targets
            .iter()
            .map(|(t, _, version)| (t.name.clone(), t.uri.clone(), version.clone()))
            .collect(),
    };
    let baseline = match (&args.baseline, &measured_units[..]) {
        (Some(name), _) => name.clone(),
        (None, [(direct, _, _), ..]) if paths.is_some() => direct.clone(),
        (None, _) => "etcd".to_string(),
    };

    // Registering many instances (registry-heartbeat --instances) is setup too: 1 ms each.
    let registering = Duration::from_millis(u64::from(args.instances.unwrap_or(0)));
    // Each round of a level gets its share of the level's bounds (see `--rounds`).
    let rounds = args.rounds.max(1);
    let round = Settings {
        bounds: Bounds {
            duration: settings.bounds.duration / rounds,
            count: (settings.bounds.count / u64::from(rounds)).max(1),
            ..settings.bounds
        },
        warmup: settings.warmup / rounds,
        ..settings.clone()
    };
    let round_limit = round.warmup + round.bounds.duration + GRACE + SETUP_ALLOWANCE + registering;
    let units = measured_units.len();
    let mut results = Vec::new();
    for (li, &clients) in args.clients.0.iter().enumerate() {
        let mut merged: Vec<Option<Measurement>> = (0..units).map(|_| None).collect();
        // A target whose run failed is not run again at this level.
        let mut failed_at_level = vec![false; units];
        for r in 0..rounds as usize {
            for k in 0..units {
                // Who goes first rotates with the level and the round, so drift hits all alike.
                let ti = (li + r + k) % units;
                if failed_at_level[ti] {
                    continue;
                }
                let name = &measured_units[ti].0;
                let progress =
                    Progress::for_terminal(format!("{} {name} @{clients}", args.workload.name()));
                let progress = progress.as_ref();
                let run = async {
                    match &paths {
                        Some(paths) => paths.run_level(ti, clients, &round, progress).await,
                        None => {
                            let conns = &targets[ti].1;
                            workloads::run_level(args.workload, conns, clients, &round, progress)
                                .await
                        }
                    }
                };
                let measured = match tokio::time::timeout(round_limit, run).await {
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) => failed(stats::describe(&e)),
                    Err(_) => failed(format!(
                        "did not finish within {}",
                        format_duration(round_limit)
                    )),
                };
                // Only a failed run takes no time (see `failed`).
                failed_at_level[ti] = measured.elapsed.is_zero();
                match &mut merged[ti] {
                    Some(earlier) => earlier.merge(&measured),
                    empty => *empty = Some(measured),
                }
            }
        }
        for (ti, measured) in merged.into_iter().enumerate() {
            let name = &measured_units[ti].0;
            let measured = measured.expect("the first round runs every target");
            let result = LevelResult::from_measurement(name, clients, &measured);
            eprintln!(
                "{} {name} @{clients}: {:.0} ops/s, p50 {} µs, p99 {} µs, p99.9 {} µs, {} errors",
                args.workload.name(),
                result.ops_per_sec,
                result.latency.p50,
                result.latency.p99,
                result.latency.p999,
                result.errors
            );
            results.push((li, ti, result));
        }
    }
    results.sort_by_key(|(li, ti, _)| (*li, *ti));
    drop(paths);

    let report = Report {
        workload: args.workload.name().to_string(),
        date,
        command: report::command_line(),
        commit: report::git_commit(),
        machine,
        targets: measured_units,
        settings: settings_shown(&args, &settings),
        baseline,
        results: results.into_iter().map(|(_, _, r)| r).collect(),
    };
    let section = report.to_markdown();
    print!("{section}");
    if let Some(path) = &args.out {
        append(path, &section).with_context(|| format!("appending to {}", path.display()))?;
        eprintln!("appended to {}", path.display());
    }
    Ok(())
}

/// A measurement that could not be taken: no samples, one error saying why.
fn failed(message: String) -> Measurement {
    let mut errors = ErrorTally::default();
    errors.add(message, 1);
    Measurement {
        elapsed: Duration::ZERO,
        latencies: stats::Latencies::new(),
        errors,
        server: None,
    }
}

/// The settings that shape this workload's numbers, for the report header.
fn settings_shown(args: &BenchArgs, settings: &Settings) -> Vec<(String, String)> {
    let mut shown = vec![
        ("duration".to_string(), format_duration(args.duration)),
        ("count cap".to_string(), args.count.to_string()),
        ("warm-up".to_string(), format_duration(args.warmup)),
        ("rounds".to_string(), args.rounds.to_string()),
        ("connections".to_string(), args.connections.to_string()),
    ];
    let rate = match (args.rate, args.workload) {
        (Some(rate), _) => Some(rate),
        (None, Workload::WatchFanout | Workload::RegistryPush) => {
            Some(workloads::DEFAULT_WATCH_RATE)
        }
        (None, Workload::ConfigPush) => Some(workloads::DEFAULT_CONFIG_PUSH_RATE),
        (None, _) => None,
    };
    if let Some(rate) = rate {
        shown.push(("rate".to_string(), format!("{rate} ops/s")));
    }
    if let Some(pid) = args.server_pid {
        shown.push(("server process".to_string(), format!("pid {pid}")));
    }
    if matches!(
        args.workload,
        Workload::KvPut
            | Workload::KvGet
            | Workload::TxnCas
            | Workload::WatchFanout
            | Workload::ConfigPush
            | Workload::ConfigRead
            | Workload::ConfigPublishNacos
            | Workload::ConfigReadNacos
    ) {
        shown.push(("value size".to_string(), format!("{} B", args.value_size)));
    }
    match args.workload {
        Workload::KvPut => shown.push(("key space".to_string(), args.key_space.to_string())),
        Workload::ConfigRead => shown.push((
            "configs".to_string(),
            u64::from(args.key_space).clamp(1, 1000).to_string(),
        )),
        Workload::ConfigReadNacos => shown.push((
            "configs".to_string(),
            u64::from(args.key_space).clamp(1, 10_000).to_string(),
        )),
        Workload::KvGet => {
            shown.push(("key space".to_string(), args.key_space.to_string()));
            let reads = if args.serializable {
                "serializable"
            } else {
                "linearizable"
            };
            shown.push(("reads".to_string(), reads.to_string()));
        }
        Workload::WatchFanout => shown.push(("streams".to_string(), args.streams.to_string())),
        Workload::LockCycle => {
            let locks = match args.one_lock {
                true => "one shared lock; latency is the hand-over",
                false => "one lock per client; latency is acquire+release",
            };
            shown.push(("locks".to_string(), locks.to_string()));
        }
        Workload::IdBatch => {
            shown.push(("id layout".to_string(), args.id_layout.clone()));
            shown.push((
                "ids per operation".to_string(),
                format!("{} (ids/s = ops/s × {})", args.id_batch, args.id_batch),
            ));
        }
        Workload::IdSingle => shown.push(("id layout".to_string(), args.id_layout.clone())),
        Workload::RegistryHeartbeat | Workload::RegistryHeartbeatGrpc => {
            let instances = args
                .instances
                .map_or_else(|| "10 per client".to_string(), |n| format!("{n} in all"));
            shown.push(("instances".to_string(), instances));
            if args.workload == Workload::RegistryHeartbeatGrpc {
                shown.push((
                    "beats per operation".to_string(),
                    format!(
                        "{} (beats/s = ops/s × {})",
                        args.beat_batch, args.beat_batch
                    ),
                ));
            }
        }
        Workload::RpcOverhead | Workload::SidecarHop => {
            shown.push(("payload".to_string(), format!("{} B", args.value_size)));
        }
        Workload::MqProduce | Workload::MqConsume | Workload::MqE2e => {
            shown.extend(workloads::mq::settings_shown(settings))
        }
        _ => {}
    }
    shown
}

fn append(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(text.as_bytes())
}
