//! What every testbed server does apart from its protocol: the runtime, the listener under the
//! connection cap, SIGINT/SIGTERM, the statistics ticker, the accept loop and the exit line of
//! `key=value` tallies. `pool` and `ledger` each plug a [`Service`] into it.
//!
//! Per-connection deadlines stay with the service: only the protocol knows when a request is
//! complete (a newline for the pool, the end of a head for the ledger). [`crate::conn`] has the
//! pieces for both.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream},
    runtime::Runtime,
};

use crate::conn::{self, Close, Closes, ConnectionCap};

/// How a server is started, as far as the skeleton goes.
#[derive(Debug, Clone)]
pub struct Spec {
    /// `testbed-pool`: starts every line the skeleton prints, and so the exit line tests find.
    pub name: &'static str,
    /// The runtime's thread name, which profiles show.
    pub thread_name: &'static str,
    pub listen: SocketAddr,
    /// Runtime worker threads (at least one).
    pub workers: usize,
    /// Print a statistics line this often (`None`: only at exit).
    pub stats_every: Option<Duration>,
    /// Refuse connections beyond this many open ones.
    pub max_connections: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: pick a free address with --listen (port 0 picks one)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error("cannot install the SIGINT/SIGTERM handlers")]
    Signals(#[source] io::Error),
    #[error("cannot start the --stall-every thread")]
    Stalls(#[source] io::Error),
    #[error(
        "cannot read or raise the open-file limit for {max} connections: lower --max-connections"
    )]
    DescriptorLimit {
        max: usize,
        #[source]
        source: io::Error,
    },
}

impl Spec {
    /// The multi-threaded runtime the server runs on.
    pub fn runtime(&self) -> Result<Runtime, ServeError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.workers.max(1))
            .thread_name(self.thread_name)
            .enable_all()
            .build()
            .map_err(ServeError::Runtime)
    }

    /// Fits the connection cap under the open-file limit, binds, and installs the signal
    /// handlers; the server prints its startup line next.
    pub async fn bind(self) -> Result<Listening, ServeError> {
        let fits = conn::fit_descriptor_limit(self.max_connections).map_err(|source| {
            ServeError::DescriptorLimit {
                max: self.max_connections,
                source,
            }
        })?;
        let bind_error = |source| ServeError::Bind {
            addr: self.listen,
            source,
        };
        let listener = TcpListener::bind(self.listen).await.map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let shutdown = Shutdown::install().map_err(ServeError::Signals)?;
        Ok(Listening {
            cap: ConnectionCap::new(fits),
            fits,
            listener,
            local,
            shutdown,
            spec: self,
        })
    }
}

/// What a server plugs into the skeleton.
pub trait Service: Send + Sync + 'static {
    /// Takes one admitted connection. The body of this function runs in the accept loop, in
    /// accept order; the future it returns runs on a task of its own and yields why the server
    /// closed the connection, if it did (`None`: the client left, or failed).
    fn connection(
        self: &Arc<Self>,
        stream: TcpStream,
    ) -> impl Future<Output = Option<Close>> + Send + 'static;

    /// Answers a connection refused at the cap of `max` open ones, without waiting; it is
    /// closed when dropped.
    fn refuse(&self, stream: TcpStream, max: usize) {
        let _ = (stream, max);
    }

    /// A statistics line after `NAME stats: `; `every` has passed since the last one.
    fn stats(&self, gauges: &Gauges, every: Duration) -> String {
        let _ = every;
        self.summary(gauges)
    }

    /// The `key=value` tallies of the exit line, which tests parse.
    fn summary(&self, gauges: &Gauges) -> String;
}

/// Connection counts every server keeps, for its statistics and exit lines.
#[derive(Debug, Default)]
pub struct Gauges {
    connections: AtomicUsize,
    peak_connections: AtomicUsize,
    total_connections: AtomicU64,
    /// Connections the server closed or refused on its own, by reason.
    pub closes: Closes,
}

impl Gauges {
    /// Open now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Most open at once.
    pub fn peak_connections(&self) -> usize {
        self.peak_connections.load(Ordering::Relaxed)
    }

    /// Admitted since the start.
    pub fn total_connections(&self) -> u64 {
        self.total_connections.load(Ordering::Relaxed)
    }

    fn connected(&self) {
        let now = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_connections.fetch_max(now, Ordering::Relaxed);
        self.total_connections.fetch_add(1, Ordering::Relaxed);
    }

    fn disconnected(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A bound server, before its accept loop runs.
#[derive(Debug)]
pub struct Listening {
    spec: Spec,
    listener: TcpListener,
    local: SocketAddr,
    cap: ConnectionCap,
    /// The cap in force: `spec.max_connections`, or less if the open-file limit is lower.
    fits: usize,
    shutdown: Shutdown,
}

impl Listening {
    /// Where it listens (the actual port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The cap for the startup line, and why it is lower than asked if it is.
    pub fn describe_cap(&self) -> String {
        conn::describe_cap(self.spec.max_connections, self.fits)
    }

    /// Serves until SIGINT or SIGTERM, then prints the exit line.
    pub async fn serve<S: Service>(mut self, service: Arc<S>) {
        let name = self.spec.name;
        let gauges = Arc::new(Gauges::default());
        if let Some(every) = self.spec.stats_every {
            let (service, gauges) = (service.clone(), gauges.clone());
            tokio::spawn(async move {
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    ticks.tick().await;
                    println!("{name} stats: {}", service.stats(&gauges, every));
                }
            });
        }
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Some(slot) = self.cap.admit() else {
                            // Closed at once: the client hears it now, not after a connect
                            // timeout.
                            service.refuse(stream, self.fits);
                            gauges.closes.count(Close::OverCap);
                            if let Some(line) = self.cap.refusal_line(name, peer, Instant::now()) {
                                println!("{line}");
                            }
                            continue;
                        };
                        let connection = service.connection(stream);
                        let gauges = gauges.clone();
                        tokio::spawn(async move {
                            gauges.connected();
                            if let Some(why) = connection.await {
                                gauges.closes.count(why);
                            }
                            gauges.disconnected();
                            drop(slot);
                        });
                    }
                    Err(err) => {
                        // Out of descriptors or similar: back off rather than spin.
                        eprintln!("{name}: accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = self.shutdown.wait() => break,
            }
        }
        println!("{name} stopped: {}", service.summary(&gauges));
    }
}

/// Resolves on SIGINT or SIGTERM.
#[derive(Debug)]
struct Shutdown {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Shutdown {
    fn install() -> io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
