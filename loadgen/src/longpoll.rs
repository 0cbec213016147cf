//! One Socket.IO client over Engine.IO long-polling on tokio: the handshake, joining a room, and
//! the loop that drives a scenario's [`Behavior`] over HTTP/1.1.
//!
//! A session holds two keep-alive connections: one carries the long-poll `GET`, always parked on
//! the server until it has packets to send (at the latest its next ping), and one the `POST`s,
//! at most one in flight, whose body is everything the behavior queued since the previous one.
//! Two connections, because a parked `GET` blocks its connection for up to a ping interval: a
//! client that waited for it to come back before posting would hold its acks and messages that
//! long. So a polling client costs the server two file descriptors (see `Kind::fds`).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clock::now_ns;
use crate::conn::{tcp_connect, Behavior, ConnError, Cx, Io, Leave, Produce};
use crate::proto::polling::{self, PollError};
use crate::proto::sio::{self, Packet, SioError};
use crate::proto::ws::Opcode;
use crate::shared::{Run, RUN, STOP};
use crate::stats::Tally;

/// Longest a driven session sleeps before it looks at the run's phase again (it has no waker
/// registered with the run: a parked `GET` or a send time wakes it otherwise).
const CHECK_NS: u64 = 200_000_000;

/// One keep-alive HTTP connection and what has been read from it.
struct Http {
    stream: TcpStream,
    rbuf: Vec<u8>,
}

/// A response taken off a connection.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Http {
    async fn open(addr: SocketAddr, source: Option<IpAddr>) -> Result<Http, ConnError> {
        let stream = tcp_connect(addr, source).await.map_err(ConnError::Connect)?;
        Ok(Http { stream, rbuf: Vec::new() })
    }

    async fn send(&mut self, request: &[u8]) -> Result<(), ConnError> {
        self.stream.write_all(request).await.map_err(ConnError::Io)
    }

    /// One read. Cancel-safe (a `select!` branch): nothing read is ever dropped.
    async fn read_some(&mut self) -> Result<(), ConnError> {
        self.rbuf.reserve(4096);
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(ConnError::Closed(None)),
            Ok(_) => Ok(()),
            Err(e) => Err(ConnError::Io(e)),
        }
    }

    /// The next complete response, if one is buffered.
    fn take(&mut self, max_body: usize) -> Result<Option<Answer>, ConnError> {
        let Some(r) = polling::parse_response(&self.rbuf, max_body)? else { return Ok(None) };
        let body = self.rbuf[r.body.0..r.body.1].to_vec();
        self.rbuf.drain(..r.len);
        Ok(Some(Answer { status: r.status, body }))
    }

    async fn answer(&mut self, max_body: usize) -> Result<Answer, ConnError> {
        loop {
            if let Some(a) = self.take(max_body)? {
                return Ok(a);
            }
            self.read_some().await?;
        }
    }
}

/// A non-200 answer ends the session (`{"code":1,"message":"Session ID unknown"}` and the like).
fn ok(a: Answer) -> Result<Answer, ConnError> {
    if a.status == 200 {
        Ok(a)
    } else {
        let body = String::from_utf8_lossy(&a.body[..a.body.len().min(200)]).into_owned();
        Err(PollError::Status { status: a.status, body }.into())
    }
}

/// A Socket.IO session over long-polling whose handshake is done.
pub struct PollConn {
    get: Http,
    post: Http,
    host: String,
    /// The session's URL: path, query and `sid`.
    path: String,
    pub io: Io,
    /// Packets received and not handled yet.
    inbox: VecDeque<Vec<u8>>,
    get_pending: bool,
    post_pending: bool,
    max_body: usize,
}

/// Opens a session at `path` (`/socket.io/?EIO=4&transport=polling`) on `addr` and connects
/// the Socket.IO namespace `/`.
pub async fn connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
    source: Option<IpAddr>,
    max_body: usize,
    seed: u64,
) -> Result<PollConn, ConnError> {
    let mut get = Http::open(addr, source).await?;
    let mut req = Vec::new();
    polling::write_get(&mut req, host, path);
    get.send(&req).await?;
    let open = ok(get.answer(max_body).await?)?;
    let first = polling::packets(&open.body).next().ok_or(SioError::Empty)?;
    let sid = sio::parse_open(first)?.sid;
    if !sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(SioError::Open(format!("sid {sid:?} is not URL-safe")).into());
    }
    let post = Http::open(addr, source).await?;
    let mut c = PollConn {
        get,
        post,
        host: host.to_string(),
        path: format!("{path}&sid={sid}"),
        io: Io::records(seed),
        inbox: VecDeque::new(),
        get_pending: false,
        post_pending: false,
        max_body,
    };
    c.io.send(Opcode::Text, sio::CONNECT_MAIN);
    c.flush().await?;
    loop {
        let packet = c.recv().await?;
        match sio::parse(&packet)? {
            Packet::Connect { nsp: b"/", .. } => return Ok(c),
            Packet::ConnectError { data, .. } => {
                return Err(SioError::ConnectRefused(String::from_utf8_lossy(data).into_owned()).into())
            }
            Packet::Close => return Err(SioError::Closed.into()),
            _ => {}
        }
    }
}

impl PollConn {
    /// Posts what is queued and waits for the answer (handshake phase only).
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if self.post_pending {
            ok(self.post.answer(self.max_body).await?)?;
            self.post_pending = false;
        }
        if self.io.pending() > 0 {
            self.start_post(false).await?;
            ok(self.post.answer(self.max_body).await?)?;
            self.post_pending = false;
        }
        Ok(())
    }

    async fn start_post(&mut self, close: bool) -> Result<(), ConnError> {
        let body = self.io.take_payload();
        let mut req = Vec::with_capacity(body.len() + 160);
        polling::write_post(&mut req, &self.host, &self.path, &body, close);
        self.post.send(&req).await?;
        self.post_pending = true;
        Ok(())
    }

    async fn start_get(&mut self) -> Result<(), ConnError> {
        if !self.get_pending {
            let mut req = Vec::with_capacity(self.path.len() + 64);
            polling::write_get(&mut req, &self.host, &self.path);
            self.get.send(&req).await?;
            self.get_pending = true;
        }
        Ok(())
    }

    /// Takes the parked `GET`'s answer if it is buffered: its packets go to the inbox.
    fn take_get(&mut self) -> Result<bool, ConnError> {
        let Some(a) = self.get.take(self.max_body)? else { return Ok(false) };
        self.get_pending = false;
        let a = ok(a)?;
        self.inbox.extend(polling::packets(&a.body).map(<[u8]>::to_vec));
        Ok(true)
    }

    /// The next packet (handshake phase only); answers pings on the way.
    pub async fn recv(&mut self) -> Result<Vec<u8>, ConnError> {
        loop {
            while let Some(p) = self.inbox.pop_front() {
                if p.as_slice() == b"2" {
                    self.io.send(Opcode::Text, sio::PONG);
                    self.flush().await?;
                    continue;
                }
                return Ok(p);
            }
            self.start_get().await?;
            while !self.take_get()? {
                self.get.read_some().await?;
            }
        }
    }

    /// Runs `beh` until the run stops, the behavior leaves or the session fails: the parked
    /// `GET` is renewed as soon as it comes back, and what the behavior queues is posted as soon
    /// as the previous `POST` is answered.
    pub async fn drive<B: Behavior>(
        &mut self,
        beh: &mut B,
        run: &Run,
        slot: usize,
        shard: usize,
    ) -> Result<(), ConnError> {
        let waker = poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let mut tally = Tally { target: run.plan.target(slot), ..Tally::default() };
        let res = self.drive_loop(beh, run, shard, &waker, &mut tally).await;
        beh.finish(&mut Cx { run, tally: &mut tally, shard, waker: &waker, now: now_ns() });
        run.stats.flush(shard, &mut tally);
        res
    }

    async fn drive_loop<B: Behavior>(
        &mut self,
        beh: &mut B,
        run: &Run,
        shard: usize,
        waker: &std::task::Waker,
        tally: &mut Tally,
    ) -> Result<(), ConnError> {
        loop {
            let phase = run.control.phase();
            if phase == STOP {
                return Ok(());
            }
            let now = now_ns();
            let mut cx = Cx { run, tally: &mut *tally, shard, waker, now };
            while let Some(p) = self.inbox.pop_front() {
                match sio::parse(&p)? {
                    Packet::Ping => self.io.send(Opcode::Text, sio::PONG),
                    Packet::Close => return Err(SioError::Closed.into()),
                    Packet::Disconnect { nsp: b"/" } => return Err(ConnError::Disconnected),
                    Packet::Pong | Packet::Noop | Packet::Open(_) | Packet::Upgrade => {}
                    packet => beh.on_sio(&mut self.io, packet, &mut cx)?,
                }
            }
            let mut wake = now + CHECK_NS;
            if phase == RUN {
                if let Produce::At(d) = beh.produce(&mut self.io, &mut cx, now) {
                    wake = wake.min(d);
                }
            }
            match beh.leave(&mut cx, now) {
                Leave::Now => return Ok(()),
                Leave::At(d) => wake = wake.min(d),
                Leave::Stay => {}
            }
            if !tally.is_empty() {
                run.stats.flush(shard, tally);
            }
            if !self.post_pending && self.io.pending() > 0 {
                self.start_post(false).await?;
            }
            self.start_get().await?;
            let sleep = tokio::time::sleep(Duration::from_nanos(wake.saturating_sub(now_ns())));
            let PollConn { get, post, post_pending, .. } = self;
            tokio::select! {
                r = get.read_some() => r?,
                r = post.read_some(), if *post_pending => r?,
                _ = sleep => {}
            }
            while self.take_get()? {
                self.start_get().await?;
            }
            if self.post_pending {
                if let Some(a) = self.post.take(self.max_body)? {
                    self.post_pending = false;
                    ok(a)?;
                }
            }
        }
    }

    /// Leaves cleanly: waits for a `POST` in flight, posts what is queued and the close packet
    /// `1` (asking the server to close that connection), and waits for the parked `GET` to come
    /// back; at most `wait`. A session that cannot say goodbye in time is reset.
    pub async fn close(mut self, wait: Duration) {
        let graceful = tokio::time::timeout(wait, async {
            if self.post_pending {
                ok(self.post.answer(self.max_body).await?)?;
                self.post_pending = false;
            }
            self.io.send(Opcode::Text, b"1");
            self.start_post(true).await?;
            ok(self.post.answer(self.max_body).await?)?;
            if self.get_pending {
                self.get.answer(self.max_body).await?;
            }
            Ok::<(), ConnError>(())
        })
        .await;
        if !matches!(graceful, Ok(Ok(()))) {
            for s in [&self.get.stream, &self.post.stream] {
                let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
            }
        }
    }
}
