//! The client side of the broker's producer wire ([`cella_proto::mq_wire`]): one TCP
//! connection per producer, opened on first use and again after it breaks.
//!
//! A send appends its frame to the connection's output under a lock and, when no write is
//! pending, writes it at once from the caller's task; only a full socket buffer hands the
//! rest to a task that waits for room. A frame is so always written whole, even when its
//! caller stops waiting. One reader task per connection hands each answer to its caller.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use cella_proto::cella::mq::v1 as pb;
use cella_proto::mq_wire::{self, Frame, Kind};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tonic::{Code, Status};

use crate::sync::lock;

/// Longest upgrade answer accepted (it is a status line and two headers).
const MAX_HANDSHAKE_BYTES: usize = 8 * 1024;

/// A producer's wire to one node, (re)connected on demand.
#[derive(Debug)]
pub(crate) struct WireLink {
    /// `HOST:PORT` of the node.
    address: String,
    connect_timeout: Duration,
    current: Mutex<Option<Arc<Connection>>>,
    /// Held while connecting, so concurrent first sends open one connection.
    connecting: tokio::sync::Mutex<()>,
}

impl WireLink {
    pub(crate) fn new(address: String, connect_timeout: Duration) -> Self {
        WireLink {
            address,
            connect_timeout,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The member's `HOST:PORT`.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// Sends one message.
    pub(crate) async fn send(&self, request: &pb::SendRequest) -> Result<pb::SendResponse, Status> {
        self.call(Kind::Send, request).await
    }

    /// Sends a batch of one topic.
    pub(crate) async fn send_batch(
        &self,
        request: &pb::SendBatchRequest,
    ) -> Result<pb::SendBatchResponse, Status> {
        self.call(Kind::SendBatch, request).await
    }

    async fn call<M: Message + Default>(
        &self,
        kind: Kind,
        request: &impl Message,
    ) -> Result<M, Status> {
        let frame = self.connection().await?.call(kind, request).await?;
        match frame.kind {
            Some(k) if k == kind => frame
                .decode()
                .map_err(|e| protocol(format!("unreadable answer: {e}"))),
            Some(Kind::Error) => {
                let refusal: pb::WireError = frame
                    .decode()
                    .map_err(|e| protocol(format!("unreadable refusal: {e}")))?;
                Err(Status::new(Code::from(refusal.code), refusal.message))
            }
            other => Err(protocol(format!(
                "answer of kind {other:?} to a {kind:?} request"
            ))),
        }
    }

    fn current(&self) -> MutexGuard<'_, Option<Arc<Connection>>> {
        lock(&self.current)
    }

    fn live(&self) -> Option<Arc<Connection>> {
        self.current().clone().filter(|c| !c.is_closed())
    }

    async fn connection(&self) -> Result<Arc<Connection>, Status> {
        if let Some(connection) = self.live() {
            return Ok(connection);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(connection) = self.live() {
            return Ok(connection);
        }
        let opened = tokio::time::timeout(self.connect_timeout, Connection::open(&self.address))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.connect_timeout)))
            .map_err(|e| Status::unavailable(format!("producer wire to {}: {e}", self.address)))?;
        let connection = Arc::new(opened);
        *self.current() = Some(Arc::clone(&connection));
        Ok(connection)
    }
}

fn protocol(message: String) -> Status {
    Status::internal(format!("producer wire: {message}"))
}

/// One open wire connection.
#[derive(Debug)]
struct Connection {
    shared: Arc<Shared>,
    next_id: AtomicU64,
    reader: AbortHandle,
}

/// What the callers, the reader task and a flushing task share.
#[derive(Debug)]
struct Shared {
    stream: TcpStream,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Callers waiting for answers, by request id.
    waiting: HashMap<u64, oneshot::Sender<Frame>>,
    /// Frames not yet written.
    output: BytesMut,
    /// Whether a task is writing `output` (the socket was full).
    flushing: bool,
    /// Why the connection closed, once it has.
    closed: Option<String>,
}

impl State {
    /// Closes the connection for everyone: waiting callers get "closed".
    fn close(&mut self, why: String) {
        self.closed.get_or_insert(why);
        self.waiting.clear();
        self.output.clear();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn close(&self, why: String) {
        self.state().close(why);
    }

    fn closed_error(&self) -> Status {
        let why = self.state().closed.clone().unwrap_or_default();
        Status::unavailable(format!("producer wire closed: {why}"))
    }

    /// Writes from `output` while the socket takes it without waiting; true when all went.
    fn write_now(&self, state: &mut State) -> bool {
        while !state.output.is_empty() {
            match self.stream.try_write(&state.output) {
                Ok(n) => state.output.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) => {
                    state.close(format!("writing: {e}"));
                    return true;
                }
            }
        }
        true
    }

    /// Writes `output` out, waiting for room as needed (runs as its own task).
    async fn flush(self: Arc<Self>) {
        loop {
            let room = self.stream.writable().await;
            let mut state = self.state();
            if let Err(e) = room {
                state.close(format!("writing: {e}"));
            }
            if self.write_now(&mut state) {
                state.flushing = false;
                return;
            }
        }
    }

    /// Hands each answer to its caller until the server closes the connection.
    async fn read(self: Arc<Self>, mut input: BytesMut) {
        let why = loop {
            loop {
                match mq_wire::decode(&mut input) {
                    Ok(Some(frame)) => {
                        if let Some(caller) = self.state().waiting.remove(&frame.id) {
                            let _ = caller.send(frame);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.close(e.to_string());
                        return;
                    }
                }
            }
            if let Err(e) = self.stream.readable().await {
                break format!("reading: {e}");
            }
            input.reserve(64 * 1024);
            match self.stream.try_read_buf(&mut input) {
                Ok(0) => break "the server closed it".to_string(),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => break format!("reading: {e}"),
            }
        };
        self.close(why);
    }
}

impl Connection {
    /// Connects to `address` and upgrades the connection to the producer wire.
    async fn open(address: &str) -> Result<Connection, String> {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let _ = stream.set_nodelay(true);
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {address}\r\nConnection: Upgrade\r\nUpgrade: {}\r\n\r\n",
            mq_wire::PATH,
            mq_wire::PROTOCOL
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("upgrading: {e}"))?;
        let mut input = BytesMut::with_capacity(MAX_HANDSHAKE_BYTES);
        let head_len = loop {
            if let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if input.len() >= MAX_HANDSHAKE_BYTES {
                return Err("the upgrade answer is too long".into());
            }
            let read = stream
                .read_buf(&mut input)
                .await
                .map_err(|e| format!("upgrading: {e}"))?;
            if read == 0 {
                return Err("the server closed the connection while upgrading".into());
            }
        };
        let head = input.split_to(head_len);
        let status_line = head[..].split(|b| *b == b'\r').next().unwrap_or_default();
        if !status_line.starts_with(b"HTTP/1.1 101") {
            return Err(format!(
                "the server refused the upgrade: {}",
                String::from_utf8_lossy(status_line)
            ));
        }
        let shared = Arc::new(Shared {
            stream,
            state: Mutex::new(State::default()),
        });
        // Frames that arrived with the upgrade answer are the reader's first input.
        let reader = tokio::spawn(Arc::clone(&shared).read(input)).abort_handle();
        Ok(Connection {
            shared,
            next_id: AtomicU64::new(1),
            reader,
        })
    }

    fn is_closed(&self) -> bool {
        self.shared.state().closed.is_some()
    }

    /// Sends one request frame and waits for its answer.
    async fn call(&self, kind: Kind, body: &impl Message) -> Result<Frame, Status> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        {
            let mut state = self.shared.state();
            if state.closed.is_some() {
                drop(state);
                return Err(self.shared.closed_error());
            }
            state.waiting.insert(id, answer);
            mq_wire::encode(&mut state.output, id, kind, body);
            if !state.flushing && !self.shared.write_now(&mut state) {
                state.flushing = true;
                tokio::spawn(Arc::clone(&self.shared).flush());
            }
        }
        answered.await.map_err(|_| self.shared.closed_error())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The reader holds the socket too; stopping it closes the connection.
        self.reader.abort();
    }
}
