//! `cella registry`: register (and keep alive), deregister, list and watch service instances.
//! A service is named `name`, `group/name` or `namespace/group/name`.

use std::io::{self, Write};

use cella_sdk::registry::{pb, service_name};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::output::{emit, write_columns, Format, Render};
use crate::{until_interrupted, Remote, UsageError};

/// The `registry` verbs.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Register an instance and print its id; with --keep-alive, beat until Ctrl-C or SIGTERM,
    /// then deregister.
    Register(RegisterArgs),
    /// Remove an instance by id (`ip#port#cluster`).
    Deregister {
        /// The service.
        service: String,
        /// The instance id.
        id: String,
    },
    /// List a service's instances.
    List {
        /// The service.
        service: String,
        /// Only healthy, enabled instances.
        #[arg(long)]
        healthy: bool,
        /// Label selector, `key=value,key!=value`.
        #[arg(long, default_value = "")]
        selector: String,
    },
    /// Print a service's instances, then every change, until Ctrl-C or SIGTERM.
    Watch {
        /// The service.
        service: String,
    },
    /// List the services of a namespace.
    Services {
        /// The namespace (default public).
        #[arg(long, default_value = "")]
        namespace: String,
    },
    /// Create a namespace.
    CreateNamespace {
        /// Its name.
        name: String,
    },
    /// Set a service's heartbeat windows and protection threshold.
    Configure(ConfigureArgs),
}

/// `cella registry register`.
#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The service.
    service: String,
    /// The instance's address.
    #[arg(long)]
    ip: String,
    /// The instance's port.
    #[arg(long)]
    port: u32,
    /// Relative share of traffic, 0 to 10000.
    #[arg(long)]
    weight: Option<f64>,
    /// Nacos cluster name.
    #[arg(long, default_value = "")]
    cluster: String,
    /// A label, `key=value` (repeatable): region, zone, cell, lane, version, ...
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Store the instance in the core and probe it, instead of heart-beating.
    #[arg(long, conflicts_with = "keep_alive")]
    persistent: bool,
    /// Keep the instance alive with heartbeats until Ctrl-C or SIGTERM, then deregister it.
    #[arg(long)]
    keep_alive: bool,
}

/// `cella registry configure`.
#[derive(Debug, Args)]
pub struct ConfigureArgs {
    /// The service.
    service: String,
    /// How often instances beat, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    beat_ms: u64,
    /// Silence after which an instance is unhealthy, in milliseconds.
    #[arg(long, default_value_t = 15000)]
    unhealthy_ms: u64,
    /// Silence after which an instance is removed, in milliseconds.
    #[arg(long, default_value_t = 30000)]
    remove_ms: u64,
    /// Hold expiry when more than this share (0-1) would go at once; 0 turns it off.
    #[arg(long, default_value_t = 0.0)]
    protect_threshold: f64,
}

pub(crate) fn parse_label(input: &str) -> Result<(String, String), String> {
    input
        .split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {input:?} must be key=value"))
}

/// Runs one `registry` verb.
pub async fn run(command: RegistryCommand, remote: &Remote, format: Format) -> anyhow::Result<()> {
    let registry = remote.connect().await?.registry();
    match command {
        RegistryCommand::Register(args) => {
            let service = service_name(&args.service);
            let instance = pb::Instance {
                ip: args.ip,
                port: args.port,
                weight: args.weight,
                cluster: args.cluster,
                labels: args.labels.into_iter().collect(),
                ..Default::default()
            };
            if args.persistent {
                let registered = registry.register_persistent(service, instance).await?;
                return emit(format, &InstancesView(vec![registered]));
            }
            let registration = registry.register(service, instance).await?;
            emit(format, &InstancesView(vec![registration.instance.clone()]))?;
            if args.keep_alive {
                until_interrupted(std::future::pending()).await?;
                registration.deregister().await?;
            }
            // Without --keep-alive the registration is left to expire unless something beats.
            Ok(())
        }
        RegistryCommand::Deregister { service, id } => {
            registry.deregister(service_name(&service), &id).await?;
            Ok(())
        }
        RegistryCommand::List {
            service,
            healthy,
            selector,
        } => {
            let view = registry
                .list(service_name(&service), healthy, &selector)
                .await?;
            emit(format, &InstancesView(view.instances))
        }
        RegistryCommand::Watch { service } => {
            let mut watch = registry.subscribe(service_name(&service)).await?;
            until_interrupted(async move {
                while watch.next().await?.is_some() {
                    emit(
                        format,
                        &WatchView {
                            version: watch.version(),
                            instances: watch.instances().values().cloned().collect(),
                        },
                    )?;
                }
                Ok(())
            })
            .await
        }
        RegistryCommand::Services { namespace } => {
            let services = registry.services(&namespace, "").await?;
            emit(format, &ServicesView(services))
        }
        RegistryCommand::CreateNamespace { name } => Ok(registry.create_namespace(&name).await?),
        RegistryCommand::Configure(args) => {
            if !(0.0..=1.0).contains(&args.protect_threshold) {
                return Err(UsageError("--protect-threshold must be from 0 to 1".into()).into());
            }
            let settings = pb::Settings {
                beat_interval_ms: args.beat_ms,
                unhealthy_after_ms: args.unhealthy_ms,
                remove_after_ms: args.remove_ms,
                protect_threshold: args.protect_threshold,
            };
            Ok(registry
                .configure(service_name(&args.service), settings)
                .await?)
        }
    }
}

fn instance_rows(instances: &[pb::Instance]) -> Vec<Vec<String>> {
    instances
        .iter()
        .map(|i| {
            let labels: Vec<String> = i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                i.id.clone(),
                format!("{}:{}", i.ip, i.port),
                i.weight.unwrap_or(1.0).to_string(),
                if i.healthy { "healthy" } else { "unhealthy" }.to_string(),
                labels.join(","),
            ]
        })
        .collect()
}

const INSTANCE_HEADERS: [&str; 5] = ["ID", "ADDRESS", "WEIGHT", "HEALTH", "LABELS"];

/// Instances, one per line.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct InstancesView(Vec<pb::Instance>);

impl Render for InstancesView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        write_columns(out, &INSTANCE_HEADERS, &instance_rows(&self.0))
    }
}

/// A service's instances after one watch event.
#[derive(Debug, Serialize)]
struct WatchView {
    version: u64,
    instances: Vec<pb::Instance>,
}

impl Render for WatchView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "version {}", self.version)?;
        write_columns(out, &INSTANCE_HEADERS, &instance_rows(&self.instances))
    }
}

/// Service names.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct ServicesView(Vec<pb::ServiceName>);

impl Render for ServicesView {
    fn write_table(&self, out: &mut dyn Write) -> io::Result<()> {
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|s| vec![s.namespace.clone(), s.group.clone(), s.name.clone()])
            .collect();
        write_columns(out, &["NAMESPACE", "GROUP", "SERVICE"], &rows)
    }
}
