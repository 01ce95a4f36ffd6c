//! The server side of the lifecycle: register only once the server accepts connections, and
//! deregister before draining, so callers never learn of an instance that cannot answer and
//! stop sending before it goes away.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::registry::{pb, service_name, Registry};
use crate::{Error, Result};

/// Timing of [`serve_registered`].
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// How long the server may take to accept its first connection.
    pub ready_timeout: Duration,
    /// Pause between deregistering and draining, for the removal to reach subscribers.
    pub drain_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            ready_timeout: Duration::from_secs(10),
            drain_grace: Duration::from_secs(1),
        }
    }
}

/// The future a server gets to learn when to drain.
pub type DrainSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a server registered as `instance` of `service`: starts `serve` (handing it the drain
/// signal), waits until the instance's address accepts TCP, registers (with heartbeats),
/// waits for `shutdown`, deregisters, waits `drain_grace`, signals the drain and waits for
/// the server to finish. A server that fails first ends this with its error.
pub async fn serve_registered<F, Fut, E>(
    registry: &Registry,
    service: &str,
    instance: pb::Instance,
    options: ServeOptions,
    serve: F,
    shutdown: impl Future<Output = ()>,
) -> Result<()>
where
    F: FnOnce(DrainSignal) -> Fut,
    Fut: Future<Output = std::result::Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let drain: DrainSignal = Box::pin(async move {
        let _ = drain_rx.await;
    });
    let mut server = tokio::spawn(serve(drain));
    let failed = |e: String| Error::Unavailable {
        message: format!("the server of {service} stopped: {e}"),
    };
    let address = format!("{}:{}", instance.ip, instance.port);
    let started = Instant::now();
    loop {
        if server.is_finished() {
            let outcome = (&mut server).await;
            return Err(failed(match outcome {
                Ok(Ok(())) => "before it was ready".into(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            }));
        }
        if TcpStream::connect(&address).await.is_ok() {
            break;
        }
        if started.elapsed() > options.ready_timeout {
            server.abort();
            return Err(failed(format!(
                "{address} accepted no connection within {:?}",
                options.ready_timeout
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let registration = registry.register(service_name(service), instance).await?;
    tokio::select! {
        () = shutdown => {}
        outcome = &mut server => {
            let _ = registration.deregister().await;
            return match outcome {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(failed(e.to_string())),
                Err(e) => Err(failed(e.to_string())),
            };
        }
    }
    registration.deregister().await?;
    tokio::time::sleep(options.drain_grace).await;
    let _ = drain_tx.send(());
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(e) => Err(failed(e.to_string())),
    }
}
