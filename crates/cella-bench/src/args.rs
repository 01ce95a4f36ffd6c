//! `cella bench` options and the parsers for their values (targets, durations, client levels).
//!
//! Parsing is pure so it is unit-tested without a server.

use std::time::Duration;

/// Options of `cella bench`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Every load loop is bounded by both --duration and --count, \
whichever comes first. Targets are measured one after another at each level, \
in rotating order, so that drift hits all of them alike."
)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub workload: Workload,

    /// Endpoints to measure side by side, as NAME=HOST:PORT (or just HOST:PORT), comma-separated.
    #[arg(long, value_name = "NAME=ADDR,...", default_value = "cella=127.0.0.1:7070", value_parser = parse_targets)]
    pub targets: Targets,

    /// Concurrency levels to run, comma-separated; each level is a separate measurement.
    /// For watch-fanout and config-push a level is the number of watchers.
    #[arg(long, value_name = "N,...", default_value = "1,64", value_parser = parse_levels)]
    pub clients: Levels,

    /// gRPC connections per target; clients share them round-robin.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,

    /// Time limit of each measured level (e.g. 10s, 500ms, 2m).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Operation limit of each measured level, summed over all clients.
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,

    /// Split each level into N rounds that take turns over the targets (each round gets
    /// 1/N of the duration, count and warm-up; the rounds of a target are merged), so a
    /// change in the machine's speed during the run falls on every target alike.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,

    /// Unmeasured load run before each level (same clients, same operation); 0s to skip.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Cap on total operations per second across all clients; unlimited by default,
    /// except the watch-fanout writer, which defaults to 100 puts/s.
    #[arg(long, value_name = "OPS")]
    pub rate: Option<u32>,

    /// Value size in bytes for puts (kv-put, kv-get's preloaded keys, txn-cas, watch-fanout) and
    /// config contents (config-*).
    #[arg(long, value_name = "BYTES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(16..=1_572_864))]
    pub value_size: u32,

    /// Number of distinct keys kv-put writes and kv-get reads.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub key_space: u32,

    /// kv-get: serializable reads (served locally, may be stale) instead of linearizable ones.
    #[arg(long)]
    pub serializable: bool,

    /// watch-fanout: watch streams the watchers are spread over (round-robin over connections).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub streams: u32,

    /// lock-cycle: all clients contend for one lock, and each operation is timed as a
    /// hand-over (previous holder's release to the next holder's grant).
    #[arg(long)]
    pub one_lock: bool,
    /// id-batch and id-single: the id layout (snowflake64, order32, or one the node serves).
    #[arg(long, value_name = "NAME", default_value = "snowflake64")]
    pub id_layout: String,

    /// id-batch: ids per Batch call (the node allows up to 10,000 by default).
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub id_batch: u32,

    /// registry-heartbeat and registry-heartbeat-grpc: instances registered, then beaten in
    /// turn, spread evenly over the clients [default: 10 per client].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub instances: Option<u32>,

    /// registry-heartbeat-grpc: beats per Heartbeat call (beats/s = ops/s × this).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub beat_batch: u32,

    /// A server process (on this machine) whose CPU share and resident memory are reported
    /// for each measured run, read from /proc/PID/stat and /proc/PID/status.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,

    /// sidecar-hop: the echo app's port on 127.0.0.1 [default: any free port]; --proxies
    /// forward to it.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub app_port: Option<u16>,

    /// sidecar-hop: HTTP reverse proxies that forward to the echo app (at --app-port), as
    /// NAME=HOST:PORT,...; each is measured as one more path beside the sidecar, a reference
    /// for its hop (e.g. nginx from bench/peers/nginx.sh).
    #[arg(long, value_name = "NAME=ADDR,...", value_parser = parse_targets, requires = "app_port")]
    pub proxies: Option<Targets>,

    /// Target whose figures the others are divided by in the ratio table [default: etcd;
    /// for rpc-overhead and sidecar-hop the direct path, `tonic` or `direct`].
    #[arg(long, value_name = "NAME")]
    pub baseline: Option<String>,
    /// mq-*: body size of every message in bytes (at least 16: the e2e send stamp).
    #[arg(long, value_name = "BYTES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=4_194_304))]
    pub message_size: u32,

    /// mq-*: durability of the topic (Cella) or queue/stream (peers) each run creates:
    /// `sync` acknowledges after fsync, `async` after the write (fsynced later).
    #[arg(long, value_enum, default_value_t = Flush::Sync)]
    pub flush: Flush,

    /// mq-*: queues of the Cella topic each run creates.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub queues: u32,

    /// mq-consume: messages sent before the consumers start (the backlog they drain).
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub backlog: u64,

    /// mq-produce and mq-e2e: messages per send call (Cella: one SendBatch, or a Send when
    /// 1; NATS: N publishes, then their N acks awaited; RabbitMQ: N publishes, then their N
    /// confirms awaited). An operation is still one message: --count and --rate count
    /// messages.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch: u32,

    /// mq-e2e: consumers receiving what the --clients producers send (at --rate).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub consumers: u32,

    /// Append the result section (markdown) to this file, e.g. bench/results/core-DATE.md.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

/// The workloads `cella bench` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Durable puts of --value-size values over --key-space keys.
    KvPut,
    /// Range reads of single preloaded keys (linearizable unless --serializable).
    KvGet,
    /// Txn: compare the key's mod_revision, then put; one key per client.
    TxnCas,
    /// Keep-alive round trips on one lease and one keep-alive stream per client.
    LeaseKeepalive,
    /// One writer, N watchers on one prefix; latency is put-sent to event-received.
    WatchFanout,
    /// One instance re-registered, N subscribers of its service; latency is change-sent to
    /// delta-received (Cella's registry API only).
    RegistryPush,
    /// Registrations of new instances through Nacos's v1 HTTP API (Cella or rnacos).
    RegistryRegister,
    /// Heartbeats of registered instances through Nacos's v1 HTTP API (Cella or rnacos).
    RegistryHeartbeat,
    /// Batched heartbeats (--beat-batch per call) of --instances instances through Cella's
    /// registry gRPC API, the path the SDK uses (Cella only).
    RegistryHeartbeatGrpc,
    /// A unary gRPC echo call to an in-process echo server, over a raw tonic channel and
    /// through the SDK's RPC stack (discovery from the target's registry), side by side.
    RpcOverhead,
    /// An HTTP echo app called directly and through a `cella sidecar` (spawned by the bench
    /// against the target) with Dapr's invoke route, side by side.
    SidecarHop,
    /// Acquire+release through etcd's v3lock service: a lock per client, or one shared lock
    /// (--one-lock) timed as hand-overs.
    LockCycle,
    /// Cella's id service: one Batch call of --id-batch ids per operation (Cella only).
    IdBatch,
    /// Cella's id service: one Next call per operation (Cella only).
    IdSingle,
    /// Config center: one publisher, N watching clients (one stream each); latency is
    /// publish-sent to watcher-notified.
    ConfigPush,
    /// Config center: gets of preloaded configs (min(--key-space, 1000) of them).
    ConfigRead,
    /// Config publishes through Nacos's v1 HTTP API, one data id per client (Cella or rnacos).
    ConfigPublishNacos,
    /// Config gets through Nacos's v1 HTTP API of min(--key-space, 10000) preloaded configs
    /// (Cella or rnacos).
    ConfigReadNacos,
    /// Message broker: acknowledged sends of --message-size bodies (Cella, NATS JetStream
    /// at nats://, RabbitMQ at amqp://).
    MqProduce,
    /// Message broker: receive+ack of a pre-filled --backlog; an operation is one message.
    MqConsume,
    /// Message broker: sends at --rate, --consumers receivers; latency is send to receive.
    MqE2e,
}

impl Workload {
    /// Whether the workload speaks HTTP/1.1 (Nacos's open API) rather than gRPC.
    pub fn uses_http(self) -> bool {
        matches!(
            self,
            Workload::RegistryRegister
                | Workload::RegistryHeartbeat
                | Workload::ConfigPublishNacos
                | Workload::ConfigReadNacos
        )
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::KvPut => "kv-put",
            Workload::KvGet => "kv-get",
            Workload::TxnCas => "txn-cas",
            Workload::LeaseKeepalive => "lease-keepalive",
            Workload::WatchFanout => "watch-fanout",
            Workload::RegistryPush => "registry-push",
            Workload::RegistryRegister => "registry-register",
            Workload::RegistryHeartbeat => "registry-heartbeat",
            Workload::RegistryHeartbeatGrpc => "registry-heartbeat-grpc",
            Workload::RpcOverhead => "rpc-overhead",
            Workload::SidecarHop => "sidecar-hop",
            Workload::LockCycle => "lock-cycle",
            Workload::IdBatch => "id-batch",
            Workload::IdSingle => "id-single",
            Workload::ConfigPush => "config-push",
            Workload::ConfigRead => "config-read",
            Workload::ConfigPublishNacos => "config-publish-nacos",
            Workload::ConfigReadNacos => "config-read-nacos",
            Workload::MqProduce => "mq-produce",
            Workload::MqConsume => "mq-consume",
            Workload::MqE2e => "mq-e2e",
        }
    }

    /// Whether the workload measures a message broker (Cella's, NATS or RabbitMQ by the
    /// target's scheme) rather than an etcd-style gRPC or Nacos HTTP server.
    pub fn is_mq(self) -> bool {
        matches!(
            self,
            Workload::MqProduce | Workload::MqConsume | Workload::MqE2e
        )
    }
}

/// Durability of the messages an mq workload sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flush {
    /// Acknowledged after fsync (Cella's group commit).
    Sync,
    /// Acknowledged after the write; fsynced later.
    Async,
}

impl Flush {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Flush::Sync => "sync",
            Flush::Async => "async",
        }
    }
}

/// Which broker a target of an mq workload is, by its address's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// Cella's `cella.mq.v1` gRPC service (`http://`, `https://` or a bare HOST:PORT).
    Cella,
    /// NATS JetStream (`nats://`).
    Nats,
    /// RabbitMQ over AMQP 0-9-1 (`amqp://`).
    Rabbitmq,
}

impl Broker {
    /// The broker a target URI (as [`parse_targets`] makes it) addresses.
    pub fn of(uri: &str) -> Result<Broker, String> {
        match uri.split_once("://").map(|(scheme, _)| scheme) {
            Some("http" | "https") => Ok(Broker::Cella),
            Some("nats") => Ok(Broker::Nats),
            Some("amqp") => Ok(Broker::Rabbitmq),
            _ => Err(format!(
                "target `{uri}`: an mq workload needs http:// (Cella), nats:// or amqp://"
            )),
        }
    }
}

/// One named endpoint to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Label in reports, e.g. `cella` or `etcd`.
    pub name: String,
    /// `http://host:port` URI the gRPC channel connects to.
    pub uri: String,
}

impl Target {
    /// The address without its scheme: `host:port`.
    pub fn host_port(&self) -> &str {
        self.uri
            .split_once("://")
            .map_or(self.uri.as_str(), |(_, rest)| rest)
    }
}

/// The endpoints of one run, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets(pub Vec<Target>);

/// Concurrency levels of one run, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Levels(pub Vec<usize>);

/// Parses `name=host:port,...`; a bare `host:port` is named after itself.
pub(crate) fn parse_targets(s: &str) -> Result<Targets, String> {
    let mut targets: Vec<Target> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, addr) = match item.split_once('=') {
            Some((name, addr)) => (name.trim(), addr.trim()),
            None => (item, item),
        };
        if name.is_empty() {
            return Err(format!("target `{item}`: the name before `=` is empty"));
        }
        if addr.is_empty() {
            return Err(format!("target `{item}`: the address after `=` is empty"));
        }
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let host_port = uri.split_once("://").map(|(_, rest)| rest).unwrap_or("");
        match host_port.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(format!("target `{item}`: the address must be HOST:PORT")),
        }
        if targets.iter().any(|t| t.name == name) {
            return Err(format!("target name `{name}` is given twice"));
        }
        targets.push(Target {
            name: name.to_string(),
            uri,
        });
    }
    if targets.is_empty() {
        return Err("at least one target is needed".to_string());
    }
    Ok(Targets(targets))
}

/// Parses `1,64,1000`: positive integers, comma-separated.
pub(crate) fn parse_levels(s: &str) -> Result<Levels, String> {
    let mut levels = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        match item.parse::<usize>() {
            Ok(n) if (1..=100_000).contains(&n) => levels.push(n),
            _ => {
                return Err(format!(
                    "client level `{item}` must be an integer from 1 to 100000"
                ))
            }
        }
    }
    if levels.is_empty() {
        return Err("at least one client level is needed".to_string());
    }
    Ok(Levels(levels))
}

/// Parses `10s`, `500ms`, `2m`, `1.5s`, `250us`; a bare number means seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration `{s}` must be a number with a unit, like 10s or 500ms"))?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "duration `{s}`: unknown unit `{other}` (use h, m, s, ms or us)"
            ))
        }
    };
    let seconds = value * seconds_per_unit;
    if !seconds.is_finite() || seconds > 7.0 * 86_400.0 {
        return Err(format!("duration `{s}` must be at most a week"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Renders a duration the way `parse_duration` reads it back (`10s`, `500ms`).
pub(crate) fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_with_names_and_bare_addresses() {
        let t = parse_targets("cella=127.0.0.1:7070, etcd=localhost:2379,10.0.0.1:80").unwrap();
        assert_eq!(
            t.0,
            vec![
                Target {
                    name: "cella".into(),
                    uri: "http://127.0.0.1:7070".into()
                },
                Target {
                    name: "etcd".into(),
                    uri: "http://localhost:2379".into()
                },
                Target {
                    name: "10.0.0.1:80".into(),
                    uri: "http://10.0.0.1:80".into()
                },
            ]
        );
        assert_eq!(
            parse_targets("x=https://h:1").unwrap().0[0].uri,
            "https://h:1"
        );
        assert_eq!(t.0[0].host_port(), "127.0.0.1:7070");
    }

    #[test]
    fn bad_targets_are_refused_with_the_reason() {
        assert!(parse_targets("").unwrap_err().contains("at least one"));
        assert!(parse_targets("=h:1").unwrap_err().contains("name"));
        assert!(parse_targets("a=").unwrap_err().contains("address"));
        assert!(parse_targets("a=h").unwrap_err().contains("HOST:PORT"));
        assert!(parse_targets("a=h:99999")
            .unwrap_err()
            .contains("HOST:PORT"));
        assert!(parse_targets("a=h:1,a=h:2").unwrap_err().contains("twice"));
    }

    #[test]
    fn brokers_by_scheme() {
        let t =
            parse_targets("cella=h:1,nats=nats://h:2,rabbitmq=amqp://h:3,x=redis://h:4").unwrap();
        let kinds: Vec<_> = t.0.iter().map(|t| Broker::of(&t.uri)).collect();
        assert_eq!(kinds[0], Ok(Broker::Cella));
        assert_eq!(kinds[1], Ok(Broker::Nats));
        assert_eq!(kinds[2], Ok(Broker::Rabbitmq));
        assert!(kinds[3].as_ref().unwrap_err().contains("nats://"));
    }

    #[test]
    fn mq_options_parse_and_are_bounded() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let cli =
            Cli::try_parse_from(["x", "mq-e2e", "--flush", "async", "--consumers", "2"]).unwrap();
        assert_eq!(cli.bench.workload, Workload::MqE2e);
        assert!(cli.bench.workload.is_mq());
        assert_eq!(cli.bench.flush, Flush::Async);
        assert_eq!(cli.bench.message_size, 1024);
        assert_eq!(cli.bench.consumers, 2);
        assert_eq!(cli.bench.batch, 1);
        assert!(Cli::try_parse_from(["x", "mq-produce", "--batch", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "mq-produce", "--batch", "1025"]).is_err());
        assert!(Cli::try_parse_from(["x", "mq-produce", "--flush", "never"]).is_err());
        assert!(Cli::try_parse_from(["x", "mq-produce", "--message-size", "8"]).is_err());
        assert!(Cli::try_parse_from(["x", "mq-consume", "--backlog", "0"]).is_err());
        assert!(!Workload::KvPut.is_mq());
    }

    #[test]
    fn levels() {
        assert_eq!(parse_levels("1,64").unwrap().0, vec![1, 64]);
        assert_eq!(parse_levels(" 8 ").unwrap().0, vec![8]);
        assert!(parse_levels("0").is_err());
        assert!(parse_levels("x").is_err());
        assert!(parse_levels(",").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("ten").unwrap_err().contains("number"));
        assert!(parse_duration("5d").unwrap_err().contains("unit"));
        assert!(parse_duration("1000h").unwrap_err().contains("week"));
    }

    #[test]
    fn durations_round_trip_through_format() {
        for s in ["10s", "500ms", "250us", "0s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
