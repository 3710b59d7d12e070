//! A TCP proxy with switchable faults, to partition one client from its backend (or slow it
//! down) while everybody else keeps talking to it.
//!
//! Put each client behind its own proxy: connect it to [`FaultProxy::url`] instead of the member.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Forward everything, each chunk delayed by this much (in both directions).
    Latency(Duration),
    /// Accept connections and keep them open, but drop every byte (a partition that does not
    /// reset connections: the client only notices by timeouts).
    Blackhole,
    /// Close every connection now and refuse new ones (RST-like failure, noticed at once).
    Refuse,
    /// Close every connection now, but accept new ones (a middlebox reset, a failover).
    Cut,
    /// Close every connection towards the client now and accept new ones, as [`Fault::Cut`],
    /// but still deliver to the server what the client had already sent, with the delay it
    /// was given (and keep those server connections open): a request the client gave up on
    /// reaches the server *after* requests the client sends on a new connection. Used after
    /// [`Fault::Latency`], it makes a stale request land late, deterministically.
    CutLate,
    /// Forward everything through the proxy's [`Rewrite`] (set with
    /// [`FaultProxy::set_rewriter`]): a fault at the level of the backend's protocol. Applies to
    /// connections made while it is set (a rewriter reads them from their first byte); on the
    /// others, and without a rewriter, it is [`Fault::None`].
    Rewrite,
}

/// Rewrites the bytes of one proxied connection, both ways: a protocol-level fault (an answer
/// changed, a message dropped). [`FaultProxy::set_rewriter`] makes one per connection.
pub trait Rewrite: Send {
    /// Bytes read from the client (`upstream`) or from the server: what to forward now (a
    /// rewriter may keep an incomplete message until the rest arrives).
    fn pass(&mut self, upstream: bool, bytes: &[u8]) -> Vec<u8>;
}

/// Makes the [`Rewrite`] of each connection made under [`Fault::Rewrite`].
pub type Rewriter = Arc<dyn Fn() -> Box<dyn Rewrite> + Send + Sync>;

/// A fault-injecting TCP proxy on 127.0.0.1. Dropping it stops it and closes its connections.
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    fault: watch::Sender<Fault>,
    rewriter: Arc<Mutex<Option<Rewriter>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy in front of `target` (e.g. an etcd member's client address).
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (fault, watcher) = watch::channel(Fault::None);
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let rewriter = Arc::new(Mutex::new(None));
        let acceptor = tokio::spawn(accept(
            listener,
            target,
            watcher,
            tasks.clone(),
            rewriter.clone(),
        ));
        Ok(FaultProxy {
            addr,
            target,
            fault,
            rewriter,
            tasks,
            acceptor,
        })
    }

    /// Starts a proxy in front of the first member of `endpoints` (`http://host:port,…`, as
    /// an etcd client takes them).
    ///
    /// # Errors
    ///
    /// When the first endpoint is not `http://<ip>:<port>`, or no loopback port can be bound.
    pub async fn in_front_of_first(endpoints: &str) -> std::io::Result<FaultProxy> {
        let first = endpoints.split(',').next().unwrap_or_default();
        let target = first.trim_start_matches("http://").parse().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("endpoint {first:?}: {e}"),
            )
        })?;
        FaultProxy::start(target).await
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, for a connection string.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the fault; it applies to existing and new connections at once.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Sets what [`Fault::Rewrite`] does to the connections made while it is set.
    pub fn set_rewriter(&self, rewriter: Rewriter) {
        *self.rewriter.lock().unwrap_or_else(|e| e.into_inner()) = Some(rewriter);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("fault", &self.fault())
            .finish()
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    fault: watch::Receiver<Fault>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    rewriter: Arc<Mutex<Option<Rewriter>>>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if *fault.borrow() == Fault::Refuse {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(target).await else {
            continue;
        };
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        // The new connection reacts only to changes made from now on.
        let mut current = fault.clone();
        let frames = match *current.borrow_and_update() {
            Fault::Rewrite => {
                let make = rewriter.lock().unwrap_or_else(|e| e.into_inner()).clone();
                make.map(|make| Arc::new(Mutex::new(make())))
            }
            _ => None,
        };
        let mut list = tasks.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|t| !t.is_finished());
        let up = pipe(cr, sw, current.clone(), Upstream::Yes, frames.clone());
        list.push(tokio::spawn(up));
        list.push(tokio::spawn(pipe(sr, cw, current, Upstream::No, frames)));
    }
}

/// Which way a pipe copies: client to server (`Yes`) or back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Yes,
    No,
}

/// Copies one direction, applying the current fault to every chunk. Latency is a delay line:
/// each chunk is written `d` after it was read, so delays do not add up.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
    upstream: Upstream,
    frames: Option<Arc<Mutex<Box<dyn Rewrite>>>>,
) {
    let (line, mut due) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            to.write_all(&bytes).await.ok()?;
        }
        Some(to)
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut cut_late = false;
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            changed = fault.changed() => {
                let now = if changed.is_err() { Fault::Refuse } else { *fault.borrow_and_update() };
                match now {
                    // Upstream, the delay line still delivers; this side stops reading.
                    Fault::CutLate if upstream == Upstream::Yes => {
                        cut_late = true;
                        break;
                    }
                    Fault::Refuse | Fault::Cut | Fault::CutLate => {
                        writer.abort(); // dropping both halves closes the connection
                        return;
                    }
                    _ => continue,
                }
            }
        };
        let now = tokio::time::Instant::now();
        let at = match *fault.borrow() {
            Fault::None | Fault::Cut | Fault::CutLate | Fault::Rewrite => now,
            Fault::Latency(d) => now + d,
            Fault::Blackhole => continue,
            Fault::Refuse => break,
        };
        let bytes = match &frames {
            Some(frames) => frames
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pass(upstream == Upstream::Yes, &buf[..n]),
            None => buf[..n].to_vec(),
        };
        if line.send((at, bytes)).is_err() {
            break;
        }
    }
    drop((line, from));
    let to = writer.await.ok().flatten();
    if cut_late && to.is_some() {
        // What was in flight has landed: keep the server's side open (closing it could cancel
        // the request before the server ran it) until the proxy goes away.
        while fault.changed().await.is_ok() {}
    }
}
