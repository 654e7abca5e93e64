//! The floor of a one-hop relay, for the benchmark's reference arms: bytes copied between each client and
//! its own upstream connection, with no protocol work at all. Two engines, so that the cost of the runtime
//! itself can be told apart from the cost of what dualwrite does per message:
//!
//! - `tokio`: one current-thread runtime per session thread, sessions handed out round-robin, each session
//!   one task running `tokio::io::copy_bidirectional`, as dualwrite's session threads run (`--timers`
//!   also enables the time driver, which dualwrite's session runtimes have).
//! - `mio`: one readiness loop per thread over `mio::Poll`, every socket of the thread edge-triggered in
//!   it, all ready sockets served before the loop blocks again: pgbouncer's model, one loop per thread.
//!
//! Not a product: no TLS, no cancel, no limits; it exists to be measured.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Engine {
    Tokio,
    Mio,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    upstream: SocketAddr,
    #[arg(long, value_enum)]
    engine: Engine,
    /// Session threads (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// tokio only: enable the time driver on the session runtimes, as dualwrite does.
    #[arg(long)]
    timers: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let threads = match args.threads {
        0 => thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let listener = TcpListener::bind(args.listen).context("listen")?;
    match args.engine {
        Engine::Tokio => serve_tokio(listener, args.upstream, threads, args.timers),
        Engine::Mio => serve_mio(listener, args.upstream, threads),
    }
}

fn accept_pairs(listener: TcpListener, upstream: SocketAddr, mut hand: impl FnMut(usize, TcpStream, TcpStream)) {
    let mut next = 0usize;
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(upstream) else { continue };
        for s in [&client, &server] {
            let _ = s.set_nodelay(true);
            let _ = s.set_nonblocking(true);
        }
        hand(next, client, server);
        next = next.wrapping_add(1);
    }
}

fn serve_tokio(listener: TcpListener, upstream: SocketAddr, threads: usize, timers: bool) -> Result<()> {
    let mut handles = Vec::new();
    for index in 0..threads {
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_io();
        if timers {
            builder.enable_time();
        }
        let runtime = builder.build()?;
        handles.push(runtime.handle().clone());
        thread::Builder::new().name(format!("floor-tokio-{index}")).spawn(move || {
            runtime.block_on(std::future::pending::<()>());
        })?;
    }
    accept_pairs(listener, upstream, |n, client, server| {
        handles[n % handles.len()].spawn(async move {
            let (Ok(mut client), Ok(mut server)) =
                (tokio::net::TcpStream::from_std(client), tokio::net::TcpStream::from_std(server))
            else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    });
    bail!("the listener stopped")
}

const BUFFER: usize = 16 * 1024;

/// One direction of a pair: bytes read from one socket and not yet written to the other.
struct Pending {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

struct Pair {
    sockets: [mio::net::TcpStream; 2],
    /// `to[0]`: bytes from the client (socket 0) for the server; `to[1]`: the other way.
    to: [Pending; 2],
}

enum Pumped {
    Open,
    Closed,
}

impl Pair {
    /// Moves what can move from socket `from` to the other one without blocking. A read shorter than the
    /// buffer drained the socket (edge-triggered epoll reports the next arrival), so it is not read again
    /// until the next event: the same four system calls per round trip as tokio and pgbouncer make.
    fn pump(&mut self, from: usize) -> Pumped {
        let (a, b) = self.sockets.split_at_mut(1);
        let (source, sink) = if from == 0 { (&mut a[0], &mut b[0]) } else { (&mut b[0], &mut a[0]) };
        let pending = &mut self.to[from];
        loop {
            while pending.start < pending.end {
                match sink.write(&pending.buf[pending.start..pending.end]) {
                    Ok(0) => return Pumped::Closed,
                    Ok(n) => pending.start += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Pumped::Open,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Pumped::Closed,
                }
            }
            if pending.end != 0 && pending.end < pending.buf.len() {
                pending.start = 0;
                pending.end = 0;
                return Pumped::Open;
            }
            pending.start = 0;
            pending.end = 0;
            match source.read(&mut pending.buf) {
                Ok(0) => return Pumped::Closed,
                Ok(n) => pending.end = n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Pumped::Open,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Pumped::Closed,
            }
        }
    }

    fn has_pending(&self, from: usize) -> bool {
        self.to[from].start < self.to[from].end
    }
}

const WAKER: mio::Token = mio::Token(usize::MAX);

fn serve_mio(listener: TcpListener, upstream: SocketAddr, threads: usize) -> Result<()> {
    let mut senders = Vec::new();
    for index in 0..threads {
        let poll = mio::Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel::<(TcpStream, TcpStream)>();
        senders.push((tx, waker));
        thread::Builder::new().name(format!("floor-mio-{index}")).spawn(move || {
            if let Err(e) = mio_loop(poll, rx) {
                eprintln!("mio loop {index} failed: {e}");
            }
        })?;
    }
    accept_pairs(listener, upstream, |n, client, server| {
        let (tx, waker) = &senders[n % senders.len()];
        if tx.send((client, server)).is_ok() {
            let _ = waker.wake();
        }
    });
    bail!("the listener stopped")
}

fn mio_loop(mut poll: mio::Poll, new_pairs: mpsc::Receiver<(TcpStream, TcpStream)>) -> io::Result<()> {
    let mut pairs: Vec<Option<Pair>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = mio::Events::with_capacity(1024);
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            polled => polled?,
        }
        for event in events.iter() {
            if event.token() == WAKER {
                while let Ok((client, server)) = new_pairs.try_recv() {
                    let slot = free.pop().unwrap_or_else(|| {
                        pairs.push(None);
                        pairs.len() - 1
                    });
                    let mut pair = Pair {
                        sockets: [mio::net::TcpStream::from_std(client), mio::net::TcpStream::from_std(server)],
                        to: [0, 1].map(|_| Pending { buf: vec![0u8; BUFFER].into_boxed_slice(), start: 0, end: 0 }),
                    };
                    let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
                    poll.registry().register(&mut pair.sockets[0], mio::Token(slot * 2), interest)?;
                    poll.registry().register(&mut pair.sockets[1], mio::Token(slot * 2 + 1), interest)?;
                    pairs[slot] = Some(pair);
                }
                continue;
            }
            let slot = event.token().0 / 2;
            let side = event.token().0 % 2;
            let Some(Some(pair)) = pairs.get_mut(slot) else { continue };
            // A readable socket feeds the other one; a writable one takes what waits for it.
            let mut closed = event.is_error();
            if !closed && event.is_readable() {
                closed = matches!(pair.pump(side), Pumped::Closed);
            }
            if !closed && event.is_writable() && pair.has_pending(1 - side) {
                closed = matches!(pair.pump(1 - side), Pumped::Closed);
            }
            if closed {
                if let Some(mut pair) = pairs[slot].take() {
                    for socket in &mut pair.sockets {
                        let _ = poll.registry().deregister(socket);
                    }
                }
                free.push(slot);
            }
        }
    }
}
