//! One client connection on tokio: TCP connect (from a chosen source address), the WebSocket
//! upgrade, the Engine.IO / Socket.IO handshake, and the loop that drives a scenario's
//! [`Behavior`].
//!
//! The loop is one task per connection polling its socket by hand (`poll_read`, `poll_write`)
//! instead of splitting the socket into reader and writer tasks: no channel, no second task.
//! Reads go into a per-thread 64 KiB scratch buffer, so an idle connection owns no buffer at
//! all and a busy one allocates only for frames split across reads.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use crate::clock::now_ns;
use crate::params::Protocol;
use crate::proto::polling::{self, PollError};
use crate::proto::sio::{self, Packet, SioError};
use crate::proto::ws::{self, Decoder, Event, Opcode, WsError};
use crate::shared::{Run, RUN, STOP};
use crate::stats::Tally;
use crate::target::Target;

/// Bytes queued for writing past which senders wait for the socket (the server is not
/// reading): the generator's own memory stays bounded whatever the server does.
pub const WBUF_HIGH: usize = 256 * 1024;
/// Reads per wake-up before the task yields to its neighbours.
const READS_PER_POLL: usize = 16;
/// Latencies a connection buffers before taking its stats lock.
const TALLY_FLUSH: usize = 256;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
}

/// Why a connection failed or ended early. None of these ends the run: they are counted by
/// [`ConnError::kind`] in the report.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("I/O: {0}")]
    Io(io::Error),
    #[error(transparent)]
    Ws(#[from] WsError),
    #[error(transparent)]
    Sio(#[from] SioError),
    #[error(transparent)]
    Poll(#[from] PollError),
    #[error("timed out")]
    Timeout,
    #[error("server closed the connection (close code {0:?})")]
    Closed(Option<u16>),
    #[error("server disconnected the Socket.IO socket")]
    Disconnected,
    #[error("unexpected answer: {0}")]
    Refused(String),
    #[error("answer without a readable send time")]
    BadReply,
}

impl ConnError {
    /// The key this error is counted under in the report's `errors`.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnError::Connect(_) => "connect",
            ConnError::Io(_) => "io",
            ConnError::Ws(e) if e.close_code().is_none() => "ws_handshake",
            ConnError::Ws(_) => "ws_protocol",
            ConnError::Sio(SioError::ConnectRefused(_)) => "sio_refused",
            ConnError::Sio(SioError::Closed) => "sio_closed",
            ConnError::Sio(_) => "sio_protocol",
            ConnError::Poll(_) => "polling",
            ConnError::Timeout => "timeout",
            ConnError::Closed(_) => "closed_by_server",
            ConnError::Disconnected => "sio_disconnected",
            ConnError::Refused(_) => "refused",
            ConnError::BadReply => "bad_reply",
        }
    }
}

/// Opens a TCP connection to `addr`, from `source` when given.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    sock.set_nodelay(true)?;
    if let Some(ip) = source {
        if ip.is_ipv4() {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `one`, which lives across
            // the call. IP_BIND_ADDRESS_NO_PORT defers the port choice to connect(), so ports are
            // unique per destination rather than per source address. Failure only costs ports.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    let std: std::net::TcpStream = sock.into();
    TcpSocket::from_std_stream(std).connect(addr).await
}

/// Builds outgoing frames; one per connection. A long-polling session's `Io` collects Engine.IO
/// packets into a payload for its next `POST` instead ([`Io::records`]), so one behavior
/// drives Socket.IO over either transport.
pub struct Io {
    wbuf: Vec<u8>,
    wpos: usize,
    rng: u64,
    scratch: Vec<u8>,
    records: bool,
}

impl Io {
    fn new(seed: u64) -> Io {
        Io { wbuf: Vec::new(), wpos: 0, rng: seed | 1, scratch: Vec::new(), records: false }
    }

    /// An `Io` whose text messages are payload records (`\x1e`-separated), for long-polling.
    pub fn records(seed: u64) -> Io {
        Io { records: true, ..Io::new(seed) }
    }

    /// Long-polling: the payload queued so far, for a `POST`; empty afterwards.
    pub fn take_payload(&mut self) -> Vec<u8> {
        self.wpos = 0;
        std::mem::take(&mut self.wbuf)
    }

    /// xorshift64*: masking keys need no cryptographic quality, only to vary.
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Queues one frame (one payload record in a long-polling `Io`, where only text exists).
    pub fn send(&mut self, opcode: Opcode, payload: &[u8]) {
        if self.records {
            if opcode == Opcode::Text {
                polling::push_packet(&mut self.wbuf, payload);
            }
            return;
        }
        let mask = (self.random() as u32).to_ne_bytes();
        ws::encode(&mut self.wbuf, opcode, payload, mask);
    }

    /// Queues one frame whose payload `build` writes.
    pub fn send_built(&mut self, opcode: Opcode, build: impl FnOnce(&mut Vec<u8>)) {
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        build(&mut s);
        self.send(opcode, &s);
        self.scratch = s;
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }
}

/// A connection whose handshake is done.
pub struct Conn {
    stream: TcpStream,
    pub io: Io,
    rbuf: Vec<u8>,
    decoder: Decoder,
    /// Messages that arrived during the handshake, for the behavior to see first.
    inbox: VecDeque<(Opcode, Vec<u8>)>,
    pub protocol: Protocol,
    close_sent: bool,
    max_message: usize,
}

/// Connects to `target` and completes the handshakes of `protocol`, presenting `token`
/// (see [`crate::token`]) on the upgrade when given.
pub async fn connect(
    target: &Target,
    source: Option<IpAddr>,
    protocol: Protocol,
    max_message: usize,
    seed: u64,
    token: Option<&str>,
) -> Result<Conn, ConnError> {
    let stream = tcp_connect(target.addr, source).await.map_err(ConnError::Connect)?;
    let mut c = Conn {
        stream,
        io: Io::new(seed),
        rbuf: Vec::new(),
        decoder: Decoder::new(max_message),
        inbox: VecDeque::new(),
        protocol,
        close_sent: false,
        max_message,
    };
    c.upgrade(target, token).await?;
    if protocol == Protocol::Sio {
        c.sio_connect().await?;
    }
    Ok(c)
}

impl Conn {
    async fn upgrade(&mut self, target: &Target, token: Option<&str>) -> Result<(), ConnError> {
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.io.random().to_le_bytes());
        nonce[8..].copy_from_slice(&self.io.random().to_le_bytes());
        let key = ws::client_key(nonce);
        ws::write_request(&mut self.io.wbuf, &target.host, &target.path, &key, token);
        self.flush().await?;
        loop {
            if let Some(head) = ws::parse_response(&self.rbuf, &key)? {
                self.rbuf.drain(..head);
                return Ok(());
            }
            self.read_more().await?;
        }
    }

    async fn sio_connect(&mut self) -> Result<(), ConnError> {
        let (op, open) = self.recv().await?;
        if op != Opcode::Text {
            return Err(SioError::Open("binary frame instead of the open packet".into()).into());
        }
        sio::parse_open(&open)?;
        self.io.send(Opcode::Text, sio::CONNECT_MAIN);
        self.flush().await?;
        loop {
            let (op, msg) = self.recv().await?;
            if op != Opcode::Text {
                continue;
            }
            match sio::parse(&msg)? {
                Packet::Connect { nsp: b"/", .. } => return Ok(()),
                Packet::ConnectError { data, .. } => {
                    return Err(SioError::ConnectRefused(String::from_utf8_lossy(data).into_owned()).into())
                }
                Packet::Ping => {
                    self.io.send(Opcode::Text, sio::PONG);
                    self.flush().await?;
                }
                Packet::Close => return Err(SioError::Closed.into()),
                _ => {}
            }
        }
    }

    /// Writes everything queued (handshake phase only).
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if self.io.pending() > 0 {
            self.stream.write_all(&self.io.wbuf[self.io.wpos..]).await.map_err(ConnError::Io)?;
        }
        self.io.wbuf.clear();
        self.io.wpos = 0;
        Ok(())
    }

    async fn read_more(&mut self) -> Result<(), ConnError> {
        if self.rbuf.len() > ws::MAX_HEAD + 14 + self.max_message {
            return Err(WsError::TooLarge(self.rbuf.len() as u64).into());
        }
        self.rbuf.reserve(4096);
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(ConnError::Closed(None)),
            Ok(_) => Ok(()),
            Err(e) => Err(ConnError::Io(e)),
        }
    }

    /// The next data message (handshake phase only); answers pings on the way.
    pub async fn recv(&mut self) -> Result<(Opcode, Vec<u8>), ConnError> {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(m);
            }
            if !self.rbuf.is_empty() {
                let Conn { rbuf, decoder, inbox, io, .. } = self;
                let used = decoder.decode(rbuf, |ev| match ev {
                    Event::Message { opcode, data } => {
                        inbox.push_back((opcode, data.to_vec()));
                        Ok(())
                    }
                    Event::Ping(p) => {
                        io.send(Opcode::Pong, p);
                        Ok(())
                    }
                    Event::Pong(_) => Ok(()),
                    Event::Close(code) => Err(ConnError::Closed(code)),
                })?;
                rbuf.drain(..used);
                self.flush().await?;
                if !self.inbox.is_empty() {
                    continue;
                }
            }
            self.read_more().await?;
        }
    }

    /// Sends a close frame and waits (at most `wait`) for the server to close first, so the
    /// TIME_WAIT state stays on its side and a handshake storm does not run out of ports; a
    /// server that does not close gets a reset.
    pub async fn close(mut self, wait: Duration) {
        self.io.send(Opcode::Close, &1000u16.to_be_bytes());
        let graceful = tokio::time::timeout(wait, async {
            self.flush().await?;
            let mut sink = [0u8; 1024];
            loop {
                match self.stream.read(&mut sink).await {
                    Ok(0) => return Ok::<(), ConnError>(()),
                    Ok(_) => {}
                    Err(e) => return Err(ConnError::Io(e)),
                }
            }
        })
        .await;
        if !matches!(graceful, Ok(Ok(()))) {
            let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        }
    }
}

/// What a behavior wants after producing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Produce {
    /// Nothing to send until something arrives (or ever again).
    Idle,
    /// The next send is due at this time.
    At(u64),
    /// Sends are due but must wait for answers or for the socket to drain.
    Blocked,
}

/// The per-connection view of the run that behaviors count into.
pub struct Cx<'a> {
    pub run: &'a Run,
    pub tally: &'a mut Tally,
    pub shard: usize,
    pub waker: &'a Waker,
    /// When the data being handled was read.
    pub now: u64,
}

impl Cx<'_> {
    /// Counts the answer to a message stamped `t`.
    pub fn record(&mut self, t: u64) {
        self.run.record(t, self.now, self.tally);
        if self.tally.lat.len() >= TALLY_FLUSH {
            self.run.stats.flush(self.shard, self.tally);
        }
    }

    /// Whether a send stamped `t` may go out (counted when measured).
    pub fn admit(&mut self, t: u64) -> bool {
        self.run.admit(t, self.tally, self.shard)
    }
}

/// A scenario's part in one connection: what it sends and what it does with what arrives.
/// Engine.IO pings, WebSocket pings and closes are handled before it sees anything.
pub trait Behavior: Send + 'static {
    /// A raw WebSocket data message.
    fn on_ws(&mut self, _io: &mut Io, _op: Opcode, _data: &[u8], _cx: &mut Cx<'_>) -> Result<(), ConnError> {
        Ok(())
    }

    /// A Socket.IO packet (anything but the Engine.IO heartbeat).
    fn on_sio(&mut self, _io: &mut Io, _p: Packet<'_>, _cx: &mut Cx<'_>) -> Result<(), ConnError> {
        Ok(())
    }

    /// Queues whatever is due at `now`.
    fn produce(&mut self, _io: &mut Io, _cx: &mut Cx<'_>, _now: u64) -> Produce {
        Produce::Idle
    }

    /// Whether the connection should end (soak: a client that leaves once it has everything it
    /// is owed). Asked after every wake-up, in every phase before the run stops.
    fn leave(&mut self, _cx: &mut Cx<'_>, _now: u64) -> Leave {
        Leave::Stay
    }

    /// The run is over: count sends that were due and never went out.
    fn finish(&mut self, _cx: &mut Cx<'_>) {}
}

/// What a behavior answers to [`Behavior::leave`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    Stay,
    /// Not yet: ask again at this time at the latest.
    At(u64),
    /// End the connection now.
    Now,
}

/// How a driven connection ended.
#[derive(Debug)]
pub enum End {
    /// Still open when the run stopped.
    Stopped,
    Failed(ConnError),
}

/// Runs `beh` on `conn` until the run stops or the connection fails.
pub async fn drive<B: Behavior>(conn: Conn, mut beh: B, run: &Run, slot: usize, shard: usize) -> End {
    let (res, mut conn) = drive_mut(conn, &mut beh, run, slot, shard).await;
    match res {
        Ok(()) => {
            // Say goodbye without waiting: thousands of connections stop at once.
            if !conn.close_sent {
                conn.io.send(Opcode::Close, &1000u16.to_be_bytes());
                let _ = conn.stream.try_write(&conn.io.wbuf[conn.io.wpos..]);
            }
            End::Stopped
        }
        Err(e) => End::Failed(e),
    }
}

/// Runs `beh` on `conn` until the run stops, the behavior leaves ([`Behavior::leave`]) or the
/// connection fails, and hands the connection back (to be closed, [`Conn::close`]).
pub async fn drive_mut<B: Behavior>(
    conn: Conn,
    beh: &mut B,
    run: &Run,
    slot: usize,
    shard: usize,
) -> (Result<(), ConnError>, Conn) {
    let tally = Tally { target: run.plan.target(slot), ..Tally::default() };
    let mut d = Driver { conn, beh, run, slot, shard, tally, armed: None, leave_armed: None, registered: false };
    let res = poll_fn(|cx| d.poll(cx)).await;
    run.control.unregister(slot);
    d.beh.finish(&mut Cx { run, tally: &mut d.tally, shard, waker: Waker::noop(), now: now_ns() });
    run.stats.flush(shard, &mut d.tally);
    (res, d.conn)
}

struct Driver<'r, B> {
    conn: Conn,
    beh: &'r mut B,
    run: &'r Run,
    slot: usize,
    shard: usize,
    tally: Tally,
    /// The deadline armed on the precise timer, so each one is armed once.
    armed: Option<u64>,
    /// The same for [`Behavior::leave`]'s deadline.
    leave_armed: Option<u64>,
    registered: bool,
}

impl<B: Behavior> Driver<'_, B> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        if !self.registered {
            self.run.control.register(self.slot, cx.waker());
            self.registered = true;
        }
        let r = self.step(cx);
        if !self.tally.is_empty() {
            self.run.stats.flush(self.shard, &mut self.tally);
        }
        r
    }

    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        let phase = self.run.control.phase();
        if phase == STOP {
            return Poll::Ready(Ok(()));
        }
        while let Some((opcode, data)) = self.conn.inbox.pop_front() {
            if let Err(e) = self.handle(Event::Message { opcode, data: &data }, cx.waker(), now_ns()) {
                return Poll::Ready(Err(e));
            }
        }
        for i in 0..=READS_PER_POLL {
            if i == READS_PER_POLL {
                cx.waker().wake_by_ref();
                break;
            }
            match self.read_once(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
        }
        for _ in 0..4 {
            let produced = if phase == RUN {
                let now = now_ns();
                let mut c = Cx { run: self.run, tally: &mut self.tally, shard: self.shard, waker: cx.waker(), now };
                self.beh.produce(&mut self.conn.io, &mut c, now)
            } else {
                Produce::Idle
            };
            if let Produce::At(deadline) = produced {
                if self.armed != Some(deadline) {
                    self.armed = Some(deadline);
                    self.run.timer.arm(deadline, cx.waker());
                }
            }
            let before = self.conn.io.pending();
            if let Err(e) = self.write(cx) {
                return Poll::Ready(Err(e));
            }
            // Only a sender held back by a full buffer that just drained goes round again.
            if !(produced == Produce::Blocked && before > 0 && self.conn.io.pending() == 0) {
                break;
            }
        }
        let now = now_ns();
        let mut c = Cx { run: self.run, tally: &mut self.tally, shard: self.shard, waker: cx.waker(), now };
        match self.beh.leave(&mut c, now) {
            Leave::Stay => {}
            Leave::Now => return Poll::Ready(Ok(())),
            Leave::At(deadline) => {
                if self.leave_armed != Some(deadline) {
                    self.leave_armed = Some(deadline);
                    self.run.timer.arm(deadline, cx.waker());
                }
            }
        }
        Poll::Pending
    }

    /// One read into the thread's scratch buffer. Through `AsyncRead` rather than `try_read`:
    /// tokio then clears the readiness after a short read, which saves the `EAGAIN` read that
    /// would otherwise follow every message on a quiet socket.
    fn read_once(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let mut rb = ReadBuf::new(&mut scratch[..]);
            let n = match Pin::new(&mut self.conn.stream).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ConnError::Io(e))),
                Poll::Ready(Ok(())) => rb.filled().len(),
            };
            if n == 0 {
                return Poll::Ready(Err(ConnError::Closed(None)));
            }
            Poll::Ready(self.process(&scratch[..n], cx.waker()))
        })
    }

    fn process(&mut self, data: &[u8], waker: &Waker) -> Result<(), ConnError> {
        let now = now_ns();
        let mut rbuf = std::mem::take(&mut self.conn.rbuf);
        let mut decoder = std::mem::replace(&mut self.conn.decoder, Decoder::new(0));
        let res = if rbuf.is_empty() {
            decoder.decode(data, |ev| self.handle(ev, waker, now)).map(|used| rbuf.extend_from_slice(&data[used..]))
        } else {
            rbuf.extend_from_slice(data);
            decoder.decode(&rbuf, |ev| self.handle(ev, waker, now)).map(|used| {
                rbuf.drain(..used);
            })
        };
        if rbuf.is_empty() && rbuf.capacity() > 64 * 1024 {
            rbuf = Vec::new();
        }
        self.conn.rbuf = rbuf;
        self.conn.decoder = decoder;
        res
    }

    fn handle(&mut self, ev: Event<'_>, waker: &Waker, now: u64) -> Result<(), ConnError> {
        let io = &mut self.conn.io;
        let mut cx = Cx { run: self.run, tally: &mut self.tally, shard: self.shard, waker, now };
        match ev {
            Event::Ping(p) => io.send(Opcode::Pong, p),
            Event::Pong(_) => {}
            Event::Close(code) => {
                if !self.conn.close_sent {
                    self.conn.close_sent = true;
                    io.send(Opcode::Close, &code.unwrap_or(1000).to_be_bytes());
                    let _ = self.conn.stream.try_write(&io.wbuf[io.wpos..]);
                }
                return Err(ConnError::Closed(code));
            }
            Event::Message { opcode, data } => match self.conn.protocol {
                Protocol::Ws => self.beh.on_ws(io, opcode, data, &mut cx)?,
                // Binary frames are Socket.IO attachments; no scenario sends any.
                Protocol::Sio if opcode == Opcode::Binary => {}
                Protocol::Sio => match sio::parse(data)? {
                    Packet::Ping => io.send(Opcode::Text, sio::PONG),
                    Packet::Close => return Err(SioError::Closed.into()),
                    Packet::Disconnect { nsp: b"/" } => return Err(ConnError::Disconnected),
                    Packet::Pong | Packet::Noop | Packet::Open(_) | Packet::Upgrade => {}
                    p => self.beh.on_sio(io, p, &mut cx)?,
                },
            },
        }
        Ok(())
    }

    fn write(&mut self, cx: &mut Context<'_>) -> Result<(), ConnError> {
        let io = &mut self.conn.io;
        while io.pending() > 0 {
            match Pin::new(&mut self.conn.stream).poll_write(cx, &io.wbuf[io.wpos..]) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(0)) => return Err(ConnError::Closed(None)),
                Poll::Ready(Ok(n)) => io.wpos += n,
                Poll::Ready(Err(e)) => return Err(ConnError::Io(e)),
            }
        }
        io.wbuf.clear();
        io.wpos = 0;
        if io.wbuf.capacity() > 1 << 20 {
            io.wbuf = Vec::new();
        }
        Ok(())
    }
}
