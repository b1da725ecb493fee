//! ggrok's multiplexer: many streams over one WebSocket, with credit-based flow control and a
//! bounded amount of everything a peer can make us hold.
//!
//! Frames (layout and types in [`crate::protocol`]) travel whole inside WebSocket binary
//! messages; a message carries as many as fit in [`MAX_CHUNK`], so the frames of every request
//! in flight leave in one message and one `send`. There are three parties per session:
//!
//! - **Streams** ([`MuxStream`]) write frames straight into the session's outbox under one lock
//!   and wake the writer task; they read what the driver queued for them. No channel message and
//!   no task sits between a stream and the socket.
//! - **The writer task** takes whatever piled up in the outbox and sends it as few messages,
//!   plus pings and the Close frame.
//! - **The driver** ([`Driver::run`]) reads messages, decodes frames and queues each one on its
//!   stream, waking the stream's reader. New streams from the peer go to a callback.
//!
//! Bounds, each with the reason it holds:
//! - A sender may send a stream at most its credit ([`STREAM_WINDOW`]) and the whole session at
//!   most the session's ([`SESSION_WINDOW`], which heads count against too). Credit comes back in
//!   WINDOW frames only as the reader consumes, so unread data is bounded per stream and per
//!   session whatever the number of streams; a peer that sends beyond its credit breaks the
//!   protocol and loses the session.
//! - A busy stream's window may grow, up to what both sides offered in the handshake
//!   ([`Config::windows`]), when the stream is the session's only busy one and its reader
//!   consumes whole windows fast, and shrinks back when that stops (see `resize`); the growth
//!   of all streams together is at most one stream's, so the session holds at most that much
//!   more, and each stream at most its window. The decision runs only when a WINDOW frame goes
//!   out, never per frame.
//! - Frames we owe the peer (credit, resets) pile up only while the peer does not read our
//!   messages: past [`MAX_CONTROL_BACKLOG`] the driver stops reading until the writer has handed
//!   them to the socket, so a peer that floods without reading gets backpressure, not our memory.
//! - Our own data waits in the outbox up to [`MAX_OUTBOX`]; a stream writing more waits.
//! - A stream whose reader leaves data unread for the stall timeout is reset, so stalled readers
//!   cannot keep the session's credit.
//! - Kept frames are slices of the message they came in only when they are at least half of it;
//!   smaller ones are copied, so a message is never held alive by a small part of it.

use std::{
    collections::{HashMap, VecDeque},
    future::{poll_fn, Future},
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{task::AtomicWaker, Stream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf},
    time::{Instant, Interval, MissedTickBehavior, Sleep},
};

use crate::protocol::{
    Heartbeat, CLOSE_PROTOCOL, FLAG_FIN, FLAG_TRAILERS, FRAME_DATA, FRAME_HEADERS,
    FRAME_HEADER_LEN, FRAME_OPEN, FRAME_RESET, FRAME_WINDOW, MAX_CHUNK, MAX_DATA_FRAME,
    MAX_HEAD_FRAME, MAX_RESET_REASON, MAX_STREAMS, RESET_CANCEL, RESET_REFUSED, RESET_STALLED,
    SESSION_WINDOW, STREAM_WINDOW,
};
use crate::ws::{self, Message};

/// Our own frames that may wait in the outbox for the writer before a stream writing data waits.
pub const MAX_OUTBOX: usize = MAX_CHUNK;
/// Frames owed to the peer (credit, resets) that may wait for the writer before the driver stops
/// reading from the peer.
pub const MAX_CONTROL_BACKLOG: usize = 64 * 1024;
/// A frame at least this large goes in a WebSocket message of its own, so its reader can keep it
/// without copying.
const OWN_MESSAGE: usize = 16 * 1024;

/// Which end of the WebSocket this session is: it decides the stream ids it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opened the WebSocket (the ggrok client): even stream ids.
    Connector,
    /// Accepted the WebSocket (the server): odd stream ids.
    Acceptor,
}

/// Settings of one session.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pings and the silence after which the peer counts as gone.
    pub heartbeat: Heartbeat,
    /// Whether the peer may open streams. A peer that opens one anyway breaks the protocol.
    pub accept_streams: bool,
    /// How long a stream's reader may leave data unread before the stream is reset.
    pub stall_timeout: Duration,
    /// Streams each side may have open at once.
    pub max_streams: usize,
    /// The largest window a stream's reader here may grow to (see [`Config::windows`]):
    /// [`STREAM_WINDOW`], the default, never grows, as a peer that did not say it accepts more
    /// requires.
    pub grow_window: u32,
    /// The most credit per stream we accept from the peer: what we said in the handshake.
    /// Credit beyond it breaks the protocol.
    pub accept_window: u32,
    /// A stream's window grows only if its reader consumed a whole window within this long.
    pub grow_within: Duration,
}

impl Config {
    /// The defaults, for a session that accepts streams or not.
    pub fn new(accept_streams: bool) -> Self {
        Self {
            heartbeat: Heartbeat::default(),
            accept_streams,
            stall_timeout: Duration::from_secs(60),
            max_streams: MAX_STREAMS,
            grow_window: STREAM_WINDOW,
            accept_window: STREAM_WINDOW,
            grow_within: GROW_WITHIN,
        }
    }

    /// The stream windows agreed in the handshake: `ours` is the largest stream credit we said
    /// we accept ([`STREAM_WINDOW`] if we said nothing), `peers` what the peer said
    /// ([`STREAM_WINDOW`] if it said nothing). Our readers grow windows up to the smaller, so
    /// neither side is sent credit beyond what it accepts nor holds more than it offered to.
    pub fn windows(self, ours: u32, peers: u32) -> Self {
        let ours = ours.max(STREAM_WINDOW);
        Self {
            accept_window: ours,
            grow_window: ours.min(peers).max(STREAM_WINDOW),
            ..self
        }
    }
}

/// A stream whose reader consumes a whole window within this long may grow its window: below
/// 256 KiB per 100 ms (2.5 MiB/s) the window is not what limits a stream on a path whose round
/// trip is under 100 ms, and a larger one would only hold more data unread.
pub const GROW_WITHIN: Duration = Duration::from_millis(100);

/// Why an operation on a stream or session failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MuxError {
    /// The session is over.
    #[error("the tunnel session ended: {0}")]
    SessionEnded(Arc<str>),
    /// The stream was reset, by the peer or by us.
    #[error("the stream was reset ({})", reset_text(*code, reason))]
    Reset {
        /// `RESET_*` code.
        code: u32,
        /// Reason given, possibly empty.
        reason: String,
    },
    /// Writing after the end of our half, or a second head.
    #[error("the stream is closed for writing")]
    Closed,
    /// The session already has as many streams as allowed.
    #[error("too many streams are open on this tunnel")]
    TooManyStreams,
    /// A head larger than [`MAX_HEAD_FRAME`].
    #[error("a head of {0} bytes is larger than the protocol allows")]
    HeadTooLarge(usize),
}

fn reset_text(code: u32, reason: &str) -> String {
    if reason.is_empty() {
        format!("code {code}")
    } else {
        format!("code {code}: {reason}")
    }
}

impl From<MuxError> for io::Error {
    fn from(e: MuxError) -> Self {
        let kind = match &e {
            MuxError::SessionEnded(_) => io::ErrorKind::ConnectionAborted,
            MuxError::Reset { .. } => io::ErrorKind::ConnectionReset,
            MuxError::Closed => io::ErrorKind::BrokenPipe,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// What a stream's reader gets, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The opening head ([`FRAME_OPEN`]) or the answering head ([`FRAME_HEADERS`]).
    Head(Bytes),
    /// Body bytes.
    Data(Bytes),
    /// Trailers; nothing follows.
    Trailers(Bytes),
}

/// A handle to close a session on purpose, and to learn whether and why the peer did.
///
/// A deliberate end is a WebSocket Close frame; a dropped connection is not. The server uses the
/// difference to free a stopped tunnel's name at once instead of holding it for a reconnect.
#[derive(Clone)]
pub struct Closing(Arc<Inner>);

impl Closing {
    /// Sends a Close frame at the next chance; the driver ends once the peer answers.
    pub fn close(&self) {
        self.0.close_requested.store(true, Ordering::SeqCst);
        self.0.writer.wake();
    }

    /// Like [`close`](Self::close), with a close code (4000–4999, see
    /// [`protocol`](crate::protocol)) and a reason for the peer to show, cut to the 123 bytes a
    /// Close frame holds.
    pub fn close_with(&self, code: u16, reason: &str) {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        *self.0.close_frame.lock().expect("close lock") = Some((code, reason[..end].to_owned()));
        self.close();
    }

    /// Whether the peer closed the session with a Close frame.
    pub fn peer_closed(&self) -> bool {
        self.0.peer_closed.load(Ordering::SeqCst)
    }

    /// The code and reason of the peer's Close frame, if it sent one with them.
    pub fn peer_close(&self) -> Option<(u16, String)> {
        self.0.peer_close.lock().expect("close lock").clone()
    }

    /// Calls off the work of every stream: each [`MuxStream::poll_abandoned`] is ready.
    pub fn stop_streams(&self) {
        let mut st = self.0.lock();
        st.streams_stopped = true;
        for s in st.streams.values_mut() {
            wake(&mut s.reset_waker);
        }
    }
}

/// The state every party of a session shares.
struct Inner {
    state: Mutex<State>,
    config: Config,
    /// The writer task, when it waits for work.
    writer: AtomicWaker,
    /// The driver, when it stopped reading until the control backlog is sent.
    reader: AtomicWaker,
    close_requested: AtomicBool,
    close_frame: Mutex<Option<(u16, String)>>,
    peer_closed: AtomicBool,
    peer_close: Mutex<Option<(u16, String)>>,
}

struct State {
    /// Looked up several times per frame: keyed by ids the peer picks within a bounded count, so
    /// a fast seeded hash (foldhash) instead of SipHash, which was ~6% of the server's work.
    streams: HashMap<u32, StreamState, foldhash::fast::RandomState>,
    /// Next id for a stream we open.
    next_id: u32,
    /// Highest id the peer opened.
    last_peer_id: u32,
    /// Streams we opened and the peer opened that are still open.
    local_open: usize,
    peer_open: usize,

    /// Encoded frames waiting for the writer.
    out: BytesMut,
    /// Bytes of `out` owed to the peer (credit, resets): what the driver's backpressure counts.
    control: usize,
    /// Streams waiting for room in `out`.
    out_waiters: Vec<Waker>,
    /// Session credit the peer gave us.
    send_credit: u64,
    /// Streams waiting for session credit.
    credit_waiters: Vec<Waker>,
    ping_due: bool,
    /// The payload of the peer's last ping, until the writer answers it.
    pong: Option<Bytes>,

    /// Session credit the peer still has.
    recv_credit: u64,
    /// Consumed since we last gave session credit back.
    recv_unacked: u64,
    /// Streams with unread data, for the stall check.
    queued: usize,
    /// Data bytes all streams' readers consumed: how a growing stream tells whether it is the
    /// session's only busy one.
    data_consumed: u64,
    /// What streams' windows hold beyond [`STREAM_WINDOW`], in sum: at most `grow_window -
    /// STREAM_WINDOW`, the extra of one fully grown stream.
    window_extra: u32,
    /// [`Config::grow_window`] and [`Config::grow_within`].
    grow_window: u32,
    grow_within: Duration,

    /// Why the session ended, once it has.
    dead: Option<Arc<str>>,
    /// The streams' work was called off ([`Closing::stop_streams`]): every
    /// [`MuxStream::poll_abandoned`] is ready.
    streams_stopped: bool,
    /// The driver is gone: the writer sends what is left and stops.
    shutdown: bool,
}

#[derive(Default)]
struct StreamState {
    queue: VecDeque<Item>,
    /// Payload bytes in `queue` that count against credit (all of it: heads count too).
    queued_bytes: usize,
    /// Data the reader took with [`MuxStream::poll_recv_held`] and still holds: its credit goes
    /// back when it is dropped.
    held: usize,
    recv_waker: Option<Waker>,
    /// Stream credit the peer still has.
    recv_credit: u32,
    /// Data consumed since we last gave stream credit back.
    recv_unacked: u32,
    /// The stream's window: what `recv_credit`, `recv_unacked`, `queued_bytes` and `held` add up
    /// to. [`STREAM_WINDOW`] at first; see [`resize`].
    window: u32,
    /// Since when, and from which `State::data_consumed`, the reader's current whole window is
    /// measured; set at the stream's first grant.
    cycle: Option<(Instant, u64)>,
    /// Credit given back since `cycle` began.
    cycle_bytes: u32,
    /// The peer's half has ended (FIN or trailers).
    recv_done: bool,
    /// The peer's half ended whole (FIN or trailers, not a reset): a reset that follows only
    /// stops our sending, and the reader still gets everything up to the end. A client that
    /// has read a whole request (its length was known) and answered it drops the stream before
    /// the request's FIN arrives; that must not cut off the answer it sent.
    recv_whole: bool,
    /// Since when data waits unread or held without any progress (for the stall check).
    waiting_since: Option<Instant>,

    send_credit: u32,
    send_waker: Option<Waker>,
    /// Our half has ended.
    send_done: bool,
    /// Whether we sent our head (answering streams) or the stream opened with one (ours).
    head_sent: bool,
    /// Whether the peer's head arrived (its OPEN, or its answering HEADERS).
    head_received: bool,

    /// Reset by either side: every later operation fails with this.
    reset: Option<(u32, String)>,
    /// Who waits in [`MuxStream::poll_abandoned`]: woken by the peer's reset, the session's
    /// end and [`Closing::stop_streams`] only.
    reset_waker: Option<Waker>,
    /// Opened by the peer (counts in `peer_open`) or by us (`local_open`).
    by_peer: bool,
}

impl State {
    fn frame(&mut self, ty: u8, flags: u8, id: u32, payload: &[u8]) {
        put_header(&mut self.out, ty, flags, id, payload.len());
        self.out.extend_from_slice(payload);
    }

    fn control_frame(&mut self, ty: u8, flags: u8, id: u32, payload: &[u8]) {
        let before = self.out.len();
        self.frame(ty, flags, id, payload);
        self.control += self.out.len() - before;
    }

    fn reset_frame(&mut self, id: u32, code: u32, reason: &str) {
        let mut end = reason.len().min(MAX_RESET_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(4 + end);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.control_frame(FRAME_RESET, 0, id, &payload);
    }

    /// `n` bytes of session credit came back to us from a reader: give them back to the peer in
    /// batches, so a busy session sends one WINDOW frame per few MiB.
    fn consumed(&mut self, n: usize) {
        self.recv_unacked += n as u64;
        if self.recv_unacked >= u64::from(SESSION_WINDOW / 4) {
            let grant = self.recv_unacked as u32;
            self.recv_unacked = 0;
            self.recv_credit += u64::from(grant);
            self.control_frame(FRAME_WINDOW, 0, 0, &grant.to_be_bytes());
        }
    }

    /// Stream credit for `n` bytes of data the reader is done with: back to the peer in batches
    /// of half the stream's window, plus what the window grows by.
    fn stream_consumed(&mut self, id: u32, n: usize) {
        self.data_consumed += n as u64;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.recv_unacked += n as u32;
        if !s.recv_done && s.recv_unacked >= s.window / 2 {
            let mut grant = std::mem::take(&mut s.recv_unacked);
            if self.grow_window > STREAM_WINDOW {
                let budget = self.grow_window - STREAM_WINDOW - self.window_extra;
                let window = resize(s, grant, self.data_consumed, self.grow_within, budget)
                    .min(self.grow_window);
                if window >= s.window {
                    let step = window - s.window;
                    self.window_extra += step;
                    grant += step;
                    s.window = window;
                } else {
                    // Shrinks by credit not given back: what the peer already has stays its.
                    let back = (s.window - window).min(grant);
                    self.window_extra -= back;
                    grant -= back;
                    s.window -= back;
                }
            }
            s.recv_credit += grant;
            if grant > 0 {
                self.control_frame(FRAME_WINDOW, 0, id, &grant.to_be_bytes());
            }
        }
    }

    /// The reader of stream `id` made progress: the stall clock restarts while it still has
    /// data waiting or held, and stops when it has none.
    fn progressed(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let was_waiting = s.waiting_since.is_some();
        let waiting = s.reset.is_none() && (!s.queue.is_empty() || s.held > 0);
        s.waiting_since = waiting.then(Instant::now);
        match (was_waiting, waiting) {
            (true, false) => self.queued -= 1,
            (false, true) => self.queued += 1,
            _ => {}
        }
    }

    /// Held data of stream `id` was dropped: its credit goes back (the session's even when the
    /// stream is gone, since the peer counted it).
    fn released(&mut self, id: u32, n: usize) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.held -= n;
            self.stream_consumed(id, n);
            self.progressed(id);
        }
        self.consumed(n);
    }

    /// Drops what a stream holds unread, giving its credit back.
    fn discard_queue(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let n = s.queued_bytes;
        s.queue.clear();
        s.queued_bytes = 0;
        if s.waiting_since.take().is_some() {
            self.queued -= 1;
        }
        if n > 0 {
            self.consumed(n);
        }
    }

    /// Resets stream `id` from our side: tells the peer (unless it reset first) and fails every
    /// later operation on it.
    fn reset_local(&mut self, id: u32, code: u32, reason: &str) {
        self.discard_queue(id);
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.reset.is_some() || (s.send_done && s.recv_done) {
            return;
        }
        s.reset = Some((code, reason.to_owned()));
        s.send_done = true;
        s.recv_done = true;
        s.recv_whole = false;
        wake(&mut s.recv_waker);
        wake(&mut s.send_waker);
        self.reset_frame(id, code, reason);
    }

    /// Stream `id` for an operation that sends: fails if the session ended, the stream is
    /// gone, or it was reset.
    fn sending(&mut self, id: u32) -> Result<&mut StreamState, MuxError> {
        if let Some(reason) = &self.dead {
            return Err(MuxError::SessionEnded(reason.clone()));
        }
        let s = self.streams.get_mut(&id).ok_or(MuxError::Closed)?;
        match &s.reset {
            Some((code, reason)) => Err(MuxError::Reset {
                code: *code,
                reason: reason.clone(),
            }),
            None => Ok(s),
        }
    }

    fn is_peer_id(&self, id: u32, role: Role) -> bool {
        match role {
            Role::Acceptor => id % 2 == 0,
            Role::Connector => id % 2 == 1,
        }
    }
}

/// The window stream `s` should have as it gives back `grant` bytes of credit. Looked at once
/// its reader has consumed a whole window since the last look: doubled if that took at most
/// `within` and at least two thirds of what all the session's readers consumed meanwhile came
/// from this stream (it is the busy one; several busy streams together already have enough in
/// flight), as far as the session's `budget` for grown windows allows; halved back towards
/// [`STREAM_WINDOW`] if either fails, so growth stays only while it pays.
fn resize(
    s: &mut StreamState,
    grant: u32,
    all_consumed: u64,
    within: Duration,
    budget: u32,
) -> u32 {
    let now = Instant::now();
    let Some((start, mark)) = s.cycle else {
        s.cycle = Some((now, all_consumed));
        return s.window;
    };
    s.cycle_bytes += grant;
    if s.cycle_bytes < s.window {
        return s.window;
    }
    let ours = u64::from(std::mem::take(&mut s.cycle_bytes));
    s.cycle = Some((now, all_consumed));
    let fast = now.duration_since(start) <= within;
    let alone = ours * 3 >= (all_consumed - mark) * 2;
    if fast && alone {
        s.window.saturating_add(s.window.min(budget))
    } else {
        (s.window / 2).max(STREAM_WINDOW)
    }
}

/// Adds `waker` to `list` unless it is there already (a task polled again while it waits).
fn push_waker(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

fn put_header(out: &mut BytesMut, ty: u8, flags: u8, id: u32, len: usize) {
    out.reserve(FRAME_HEADER_LEN + len);
    out.put_u8(ty);
    out.put_u8(flags);
    out.put_u32(id);
    out.put_u32(len as u32);
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the session: every stream's next operation fails, and the writer stops.
    fn kill(&self, reason: &str) {
        let mut guard = self.lock();
        let st = &mut *guard;
        if st.dead.is_none() {
            st.dead = Some(reason.into());
        }
        st.shutdown = true;
        for s in st.streams.values_mut() {
            wake(&mut s.recv_waker);
            wake(&mut s.send_waker);
            wake(&mut s.reset_waker);
        }
        let waiters: Vec<Waker> = st
            .out_waiters
            .drain(..)
            .chain(st.credit_waiters.drain(..))
            .collect();
        drop(guard);
        waiters.into_iter().for_each(Waker::wake);
        self.writer.wake();
        self.reader.wake();
    }
}

/// Starts a session on an established WebSocket. Spawns the writer task on the current
/// runtime; reading happens in the returned [`Driver`], which the caller runs.
pub fn start<S>(ws: ws::Socket<S>, role: Role, config: Config) -> (Session, Driver<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (read, sink) = ws.split();
    let heartbeat = config.heartbeat;
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            streams: HashMap::default(),
            next_id: match role {
                Role::Connector => 2,
                Role::Acceptor => 1,
            },
            last_peer_id: 0,
            local_open: 0,
            peer_open: 0,
            out: BytesMut::new(),
            control: 0,
            out_waiters: Vec::new(),
            send_credit: u64::from(SESSION_WINDOW),
            credit_waiters: Vec::new(),
            ping_due: false,
            pong: None,
            recv_credit: u64::from(SESSION_WINDOW),
            recv_unacked: 0,
            queued: 0,
            data_consumed: 0,
            window_extra: 0,
            grow_window: config.grow_window.max(STREAM_WINDOW),
            grow_within: config.grow_within,
            dead: None,
            streams_stopped: false,
            shutdown: false,
        }),
        config,
        writer: AtomicWaker::new(),
        reader: AtomicWaker::new(),
        close_requested: AtomicBool::new(false),
        close_frame: Mutex::new(None),
        peer_closed: AtomicBool::new(false),
        peer_close: Mutex::new(None),
    });
    tokio::spawn(write_task(sink, inner.clone()));
    let mut ping =
        tokio::time::interval_at(Instant::now() + heartbeat.interval, heartbeat.interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let driver = Driver {
        inner: inner.clone(),
        read,
        role,
        ping,
        silence: Box::pin(tokio::time::sleep(heartbeat.timeout)),
        stall: None,
        opened: Vec::new(),
    };
    (Session { inner, role }, driver)
}

/// A handle to a session: opens streams. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
    role: Role,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("role", &self.role).finish()
    }
}

impl Session {
    /// A handle to close the session on purpose or see whether the peer did.
    pub fn closing(&self) -> Closing {
        Closing(self.inner.clone())
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().dead.is_some()
    }

    /// Opens a stream whose OPEN frame carries `head`; `fin` if nothing follows from our side.
    /// Waits only for session credit for the head.
    pub async fn open(&self, head: Bytes, fin: bool) -> Result<MuxStream, MuxError> {
        if head.len() > MAX_HEAD_FRAME {
            return Err(MuxError::HeadTooLarge(head.len()));
        }
        let inner = &self.inner;
        poll_fn(|cx| {
            let mut st = inner.lock();
            if let Some(reason) = &st.dead {
                return Poll::Ready(Err(MuxError::SessionEnded(reason.clone())));
            }
            if st.local_open >= inner.config.max_streams {
                return Poll::Ready(Err(MuxError::TooManyStreams));
            }
            if st.send_credit < head.len() as u64 {
                push_waker(&mut st.credit_waiters, cx.waker());
                return Poll::Pending;
            }
            st.send_credit -= head.len() as u64;
            let id = st.next_id;
            st.next_id = st.next_id.wrapping_add(2);
            if st.next_id < 2 {
                // 2^31 streams on one session: end it rather than reuse ids.
                drop(st);
                inner.kill("stream ids exhausted");
                return Poll::Ready(Err(MuxError::TooManyStreams));
            }
            st.local_open += 1;
            st.streams.insert(
                id,
                StreamState {
                    recv_credit: STREAM_WINDOW,
                    window: STREAM_WINDOW,
                    send_credit: STREAM_WINDOW,
                    send_done: fin,
                    head_sent: true,
                    ..StreamState::default()
                },
            );
            let was_empty = st.out.is_empty();
            st.frame(FRAME_OPEN, if fin { FLAG_FIN } else { 0 }, id, &head);
            drop(st);
            if was_empty {
                inner.writer.wake();
            }
            Poll::Ready(Ok(MuxStream::new(id, inner.clone())))
        })
        .await
    }
}

/// Reads the session: the caller runs [`Driver::run`] for as long as the session lives.
/// Dropping it ends the session.
pub struct Driver<S> {
    inner: Arc<Inner>,
    read: ws::Reader<ReadHalf<S>>,
    role: Role,
    ping: Interval,
    silence: Pin<Box<Sleep>>,
    /// Armed while some stream has unread data.
    stall: Option<Pin<Box<Sleep>>>,
    /// The streams a message opened, by id: kept between messages for its allocation.
    opened: Vec<u32>,
}

impl<S> Drop for Driver<S> {
    fn drop(&mut self) {
        self.inner.kill("the session was closed");
    }
}

/// A protocol violation by the peer: the session ends.
#[derive(Debug)]
struct Violation(String);

impl<S> Driver<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Reads and dispatches frames until the session ends; streams the peer opens go to
    /// `on_open`, their opening head first in their queue. Returns `Ok` when the peer closed the
    /// session on purpose (or the connection ended cleanly), else why it broke.
    pub async fn run(mut self, mut on_open: impl FnMut(MuxStream)) -> Result<(), String> {
        let result = poll_fn(|cx| self.poll_run(cx, &mut on_open)).await;
        let reason = match &result {
            Ok(()) => "the session was closed".to_owned(),
            Err(e) => e.clone(),
        };
        self.inner.kill(&reason);
        result
    }

    fn poll_run(
        &mut self,
        cx: &mut Context<'_>,
        on_open: &mut impl FnMut(MuxStream),
    ) -> Poll<Result<(), String>> {
        // Registered on every poll: `kill` and the writer wake the driver through it.
        self.inner.reader.register(cx.waker());
        loop {
            if self.silence.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(format!(
                    "the peer was silent for {:?}",
                    self.inner.config.heartbeat.timeout
                )));
            }
            if self.ping.poll_tick(cx).is_ready() {
                self.inner.lock().ping_due = true;
                self.inner.writer.wake();
            }
            if let Some(stall) = self.stall.as_mut() {
                if stall.as_mut().poll(cx).is_ready() {
                    self.stall = None;
                    self.reset_stalled();
                    // Polls the re-armed check, so that it wakes us.
                    continue;
                }
            }
            {
                let st = self.inner.lock();
                if let Some(reason) = &st.dead {
                    return Poll::Ready(Err(reason.to_string()));
                }
                if st.control >= MAX_CONTROL_BACKLOG {
                    // The peer is not reading what we owe it: stop reading from it until the
                    // writer has handed the backlog to the socket (it wakes us then).
                    return Poll::Pending;
                }
            }
            let msg = match self.read.poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(msg))) => msg,
            };
            let deadline = Instant::now() + self.inner.config.heartbeat.timeout;
            self.silence.as_mut().reset(deadline);
            match msg {
                Message::Binary(data) => {
                    if let Err(Violation(why)) = self.dispatch(data, on_open) {
                        Closing(self.inner.clone()).close_with(CLOSE_PROTOCOL, &why);
                        return Poll::Ready(Err(format!("protocol error: {why}")));
                    }
                }
                Message::Close(frame) => {
                    // Answered with a Close of the same code (RFC 6455 §5.5.1), which the
                    // writer sends as the session shuts down, unless ours went first.
                    let code = frame.as_ref().map_or(1000, |(code, _)| *code);
                    self.inner
                        .close_frame
                        .lock()
                        .expect("close lock")
                        .get_or_insert((code, String::new()));
                    self.inner.close_requested.store(true, Ordering::SeqCst);
                    *self.inner.peer_close.lock().expect("close lock") = frame;
                    self.inner.peer_closed.store(true, Ordering::SeqCst);
                    return Poll::Ready(Ok(()));
                }
                Message::Text => {
                    return Poll::Ready(
                        Err("unexpected text message on a ggrok session".to_owned()),
                    )
                }
                Message::Ping(payload) => {
                    self.inner.lock().pong = Some(payload);
                    self.inner.writer.wake();
                }
                Message::Pong => {}
            }
        }
    }

    /// Handles one message's frames.
    fn dispatch(
        &mut self,
        msg: Bytes,
        on_open: &mut impl FnMut(MuxStream),
    ) -> Result<(), Violation> {
        let mut rest = &msg[..];
        let mut opened = std::mem::take(&mut self.opened);
        let mut st = self.inner.lock();
        let was_empty = st.out.is_empty();
        let mut arm_stall = false;
        while !rest.is_empty() {
            if rest.len() < FRAME_HEADER_LEN {
                return Err(Violation("a frame header is cut off".into()));
            }
            let ty = rest[0];
            let flags = rest[1];
            let id = u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]);
            let len = u32::from_be_bytes([rest[6], rest[7], rest[8], rest[9]]) as usize;
            let start = msg.len() - rest.len() + FRAME_HEADER_LEN;
            if rest.len() - FRAME_HEADER_LEN < len {
                return Err(Violation("a frame is longer than its message".into()));
            }
            let payload = &rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
            rest = &rest[FRAME_HEADER_LEN + len..];
            // Keep a slice of the message only if it is most of it.
            let keep = |p: &[u8]| -> Bytes {
                if p.len() * 2 >= msg.len() {
                    msg.slice(start..start + p.len())
                } else {
                    Bytes::copy_from_slice(p)
                }
            };
            match ty {
                FRAME_WINDOW => {
                    let [a, b, c, d] = payload else {
                        return Err(Violation("a WINDOW frame must carry 4 bytes".into()));
                    };
                    let inc = u32::from_be_bytes([*a, *b, *c, *d]);
                    if id == 0 {
                        st.send_credit += u64::from(inc);
                        if st.send_credit > u64::from(SESSION_WINDOW) {
                            return Err(Violation("session credit beyond the window".into()));
                        }
                        let waiters: Vec<Waker> = st.credit_waiters.drain(..).collect();
                        waiters.into_iter().for_each(Waker::wake);
                    } else if let Some(s) = st.streams.get_mut(&id) {
                        s.send_credit = s.send_credit.saturating_add(inc);
                        if s.send_credit > self.inner.config.accept_window {
                            return Err(Violation("stream credit beyond the window".into()));
                        }
                        wake(&mut s.send_waker);
                    } else {
                        self.check_closed_id(&st, id)?;
                    }
                }
                FRAME_RESET => {
                    if payload.len() < 4 || payload.len() > 4 + MAX_RESET_REASON {
                        return Err(Violation("a RESET frame has a bad length".into()));
                    }
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    let reason = String::from_utf8_lossy(&payload[4..]).into_owned();
                    if let Some(s) = st.streams.get_mut(&id) {
                        // What arrived before the reset is still read first: a cut-off upload
                        // reaches the local service as far as it came, then fails.
                        if s.reset.is_none() {
                            s.reset = Some((code, reason));
                        }
                        s.send_done = true;
                        s.recv_done = true;
                        wake(&mut s.recv_waker);
                        wake(&mut s.send_waker);
                        wake(&mut s.reset_waker);
                    } else {
                        self.check_closed_id(&st, id)?;
                    }
                }
                FRAME_OPEN | FRAME_DATA | FRAME_HEADERS => {
                    let counted = len as u64;
                    if counted > st.recv_credit {
                        return Err(Violation(
                            "the peer sent beyond the session's credit".into(),
                        ));
                    }
                    st.recv_credit -= counted;
                    if ty == FRAME_DATA && len > MAX_DATA_FRAME {
                        return Err(Violation("a DATA frame is too large".into()));
                    }
                    if ty != FRAME_DATA && len > MAX_HEAD_FRAME {
                        return Err(Violation("a head frame is too large".into()));
                    }
                    if ty == FRAME_OPEN {
                        if !self.inner.config.accept_streams {
                            return Err(Violation("this side does not accept streams".into()));
                        }
                        if id == 0 || !st.is_peer_id(id, self.role) || id <= st.last_peer_id {
                            return Err(Violation(format!("stream id {id} cannot open")));
                        }
                        st.last_peer_id = id;
                        if st.peer_open >= self.inner.config.max_streams {
                            // Refused: its head is consumed at once.
                            st.consumed(len);
                            st.reset_frame(id, RESET_REFUSED, "too many streams");
                            continue;
                        }
                        st.peer_open += 1;
                        let fin = flags & FLAG_FIN != 0;
                        let mut s = StreamState {
                            recv_credit: STREAM_WINDOW,
                            window: STREAM_WINDOW,
                            send_credit: STREAM_WINDOW,
                            recv_done: fin,
                            recv_whole: fin,
                            by_peer: true,
                            head_received: true,
                            queued_bytes: len,
                            // Sized as its first growth would: one allocation, not the growth
                            // path's, on every stream.
                            queue: VecDeque::with_capacity(4),
                            ..StreamState::default()
                        };
                        s.queue.push_back(Item::Head(keep(payload)));
                        st.streams.insert(id, s);
                        opened.push(id);
                        continue;
                    }
                    let Some(s) = st.streams.get_mut(&id) else {
                        self.check_closed_id(&st, id)?;
                        // A stream that ended here while the frame was on its way.
                        st.consumed(len);
                        continue;
                    };
                    if s.recv_done || s.reset.is_some() {
                        if s.reset.is_none() {
                            return Err(Violation(format!("frame after the end of stream {id}")));
                        }
                        st.consumed(len);
                        continue;
                    }
                    let fin = flags & FLAG_FIN != 0;
                    let item = if ty == FRAME_DATA {
                        if len as u32 > s.recv_credit {
                            return Err(Violation("the peer sent beyond a stream's credit".into()));
                        }
                        s.recv_credit -= len as u32;
                        (len > 0).then(|| Item::Data(keep(payload)))
                    } else if flags & FLAG_TRAILERS != 0 {
                        s.recv_done = true;
                        s.recv_whole = true;
                        Some(Item::Trailers(keep(payload)))
                    } else {
                        if s.head_received {
                            return Err(Violation(format!("a second head on stream {id}")));
                        }
                        s.head_received = true;
                        Some(Item::Head(keep(payload)))
                    };
                    if fin {
                        s.recv_done = true;
                        s.recv_whole = true;
                    }
                    if let Some(item) = item {
                        s.queued_bytes += len;
                        s.queue.push_back(item);
                        if s.waiting_since.is_none() {
                            s.waiting_since = Some(Instant::now());
                            st.queued += 1;
                            arm_stall = true;
                        }
                    }
                    let s = st.streams.get_mut(&id).expect("stream present");
                    wake(&mut s.recv_waker);
                }
                other => return Err(Violation(format!("unknown frame type {other}"))),
            }
        }
        let wake_writer = was_empty && !st.out.is_empty();
        drop(st);
        if wake_writer {
            self.inner.writer.wake();
        }
        if arm_stall && self.stall.is_none() {
            let period = self.inner.config.stall_timeout / 4;
            self.stall = Some(Box::pin(tokio::time::sleep(
                period.max(Duration::from_millis(10)),
            )));
        }
        for id in opened.drain(..) {
            on_open(MuxStream::new(id, self.inner.clone()));
        }
        self.opened = opened;
        Ok(())
    }

    /// A frame names a stream we do not have: fine if it ended here, a violation if it never
    /// existed.
    fn check_closed_id(&self, st: &State, id: u32) -> Result<(), Violation> {
        let existed = if id == 0 {
            false
        } else if st.is_peer_id(id, self.role) {
            id <= st.last_peer_id
        } else {
            id < st.next_id
        };
        if existed {
            Ok(())
        } else {
            Err(Violation(format!(
                "frame for stream {id}, which was never opened"
            )))
        }
    }

    /// Resets streams whose reader left data unread for the stall timeout; re-arms the check
    /// while any stream has unread data.
    fn reset_stalled(&mut self) {
        let timeout = self.inner.config.stall_timeout;
        let now = Instant::now();
        let mut st = self.inner.lock();
        let stalled: Vec<u32> = st
            .streams
            .iter()
            .filter(|(_, s)| {
                s.waiting_since
                    .is_some_and(|t| now.duration_since(t) >= timeout)
            })
            .map(|(id, _)| *id)
            .collect();
        let was_empty = st.out.is_empty();
        for id in stalled {
            st.reset_local(id, RESET_STALLED, "its reader read nothing for too long");
        }
        let rearm = st.queued > 0;
        let wake_writer = was_empty && !st.out.is_empty();
        drop(st);
        if wake_writer {
            self.inner.writer.wake();
        }
        if rearm {
            let period = timeout / 4;
            self.stall = Some(Box::pin(tokio::time::sleep(
                period.max(Duration::from_millis(10)),
            )));
        }
    }
}

/// What the writer task takes from the outbox in one go.
struct Batch {
    data: BytesMut,
    ping: bool,
    pong: Option<Bytes>,
    close: bool,
    shutdown: bool,
}

/// Sends what the session's parties queue, in as few messages as the frames fit, until the
/// session ends.
async fn write_task<S>(mut sink: ws::Writer<WriteHalf<S>>, inner: Arc<Inner>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut close_sent = false;
    let result: io::Result<()> = async {
        loop {
            // The wake-up that brings us here waits its turn in the runtime's queue, so frames
            // written meanwhile join the batch (docs/benchmarks.md).
            let batch = poll_fn(|cx| {
                inner.writer.register(cx.waker());
                let close = !close_sent && inner.close_requested.load(Ordering::SeqCst);
                let mut st = inner.lock();
                if st.out.is_empty() && !st.ping_due && st.pong.is_none() && !st.shutdown && !close
                {
                    return Poll::Pending;
                }
                let batch = Batch {
                    // The buffer goes with the batch: an idle session keeps no outbox.
                    data: std::mem::take(&mut st.out),
                    ping: std::mem::take(&mut st.ping_due),
                    pong: st.pong.take(),
                    close,
                    shutdown: st.shutdown,
                };
                let backlog = std::mem::take(&mut st.control) >= MAX_CONTROL_BACKLOG;
                let waiters: Vec<Waker> = st.out_waiters.drain(..).collect();
                drop(st);
                waiters.into_iter().for_each(Waker::wake);
                if backlog {
                    inner.reader.wake();
                }
                Poll::Ready(batch)
            })
            .await;
            // Nothing may follow our Close frame: what streams write after it is dropped.
            if !close_sent {
                for msg in messages(batch.data) {
                    sink.binary(msg);
                }
                if batch.ping {
                    sink.ping();
                }
                if let Some(payload) = batch.pong {
                    sink.pong(&payload);
                }
            }
            if batch.close {
                let given = inner.close_frame.lock().expect("close lock").take();
                let (code, reason) = given.unwrap_or((1000, "stopped".to_owned()));
                sink.close(code, &reason);
                close_sent = true;
            }
            poll_fn(|cx| sink.poll_flush(cx)).await?;
            if batch.shutdown {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        inner.kill(&format!("connection error: {e}"));
    }
}

/// Splits a batch of whole frames into WebSocket messages of at most [`MAX_CHUNK`] bytes, each
/// frame of [`OWN_MESSAGE`] bytes or more in a message of its own.
fn messages(mut batch: BytesMut) -> impl Iterator<Item = BytesMut> {
    std::iter::from_fn(move || {
        if batch.is_empty() {
            return None;
        }
        let mut end = 0;
        while end < batch.len() {
            let len =
                u32::from_be_bytes(batch[end + 6..end + 10].try_into().expect("4 bytes")) as usize;
            let size = FRAME_HEADER_LEN + len;
            let big = len >= OWN_MESSAGE;
            if end > 0 && (big || end + size > MAX_CHUNK) {
                break;
            }
            end += size;
            if big {
                break;
            }
        }
        Some(batch.split_to(end))
    })
}

/// Data taken with [`MuxStream::poll_recv_held`]: gives its credit back when dropped.
struct Held {
    bytes: Bytes,
    inner: Arc<Inner>,
    id: u32,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        let was_empty = st.out.is_empty();
        st.released(self.id, self.bytes.len());
        let wake_writer = was_empty && !st.out.is_empty();
        drop(st);
        if wake_writer {
            self.inner.writer.wake();
        }
    }
}

/// One stream of a session. Dropping the last handle to a stream that has not ended both ways
/// resets it. Clones are handles to the same stream (one may read while another writes).
#[derive(Clone)]
pub struct MuxStream {
    handle: Arc<Handle>,
}

/// Frees the stream's state when the last [`MuxStream`] goes.
struct Handle {
    id: u32,
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        let was_empty = st.out.is_empty();
        if st.dead.is_none() {
            st.reset_local(self.id, RESET_CANCEL, "");
        }
        st.discard_queue(self.id);
        if let Some(s) = st.streams.remove(&self.id) {
            st.window_extra -= s.window - STREAM_WINDOW;
            if s.by_peer {
                st.peer_open -= 1;
            } else {
                st.local_open -= 1;
            }
        }
        let wake_writer = was_empty && !st.out.is_empty();
        drop(st);
        if wake_writer {
            self.inner.writer.wake();
        }
    }
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxStream")
            .field("id", &self.handle.id)
            .finish()
    }
}

impl MuxStream {
    fn new(id: u32, inner: Arc<Inner>) -> Self {
        Self {
            handle: Arc::new(Handle { id, inner }),
        }
    }

    /// The stream's id on the wire.
    pub fn id(&self) -> u32 {
        self.handle.id
    }

    fn inner(&self) -> &Inner {
        &self.handle.inner
    }

    /// Whether the peer's half has ended with nothing left unread (a head with FIN: no body).
    pub fn peer_finished(&self) -> bool {
        let st = self.inner().lock();
        st.streams
            .get(&self.handle.id)
            .is_some_and(|s| s.recv_done && s.queue.is_empty() && s.reset.is_none())
    }

    /// The next item from the peer; `None` once its half has ended. Taking data gives its credit
    /// back to the peer.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Item, MuxError>>> {
        self.poll_item(cx, false)
    }

    /// Like [`poll_recv`](Self::poll_recv), but the credit of the data returned goes back only
    /// when the last reference to its bytes drops. A reader that hands data on to a slow socket
    /// (hyper keeps what it writes until the socket takes it) thus holds it within the stream's
    /// and the session's credit, and a reader whose sink stops taking it counts as stalled.
    pub fn poll_recv_held(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Item, MuxError>>> {
        self.poll_item(cx, true)
    }

    fn poll_item(&self, cx: &mut Context<'_>, hold: bool) -> Poll<Option<Result<Item, MuxError>>> {
        let id = self.handle.id;
        let inner = self.inner();
        let mut st = inner.lock();
        let st = &mut *st;
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Some(Err(MuxError::Closed)));
        };
        let Some(item) = s.queue.pop_front() else {
            if s.recv_whole {
                return Poll::Ready(None);
            }
            if let Some((code, reason)) = &s.reset {
                return Poll::Ready(Some(Err(MuxError::Reset {
                    code: *code,
                    reason: reason.clone(),
                })));
            }
            if s.recv_done {
                return Poll::Ready(None);
            }
            if let Some(reason) = &st.dead {
                return Poll::Ready(Some(Err(MuxError::SessionEnded(reason.clone()))));
            }
            s.recv_waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let (n, data) = match &item {
            Item::Data(b) => (b.len(), true),
            Item::Head(b) | Item::Trailers(b) => (b.len(), false),
        };
        s.queued_bytes -= n;
        let item = match item {
            Item::Data(bytes) if hold && n > 0 => {
                s.held += n;
                Item::Data(Bytes::from_owner(Held {
                    bytes,
                    inner: self.handle.inner.clone(),
                    id,
                }))
            }
            item => item,
        };
        let was_empty = st.out.is_empty();
        st.progressed(id);
        if !(hold && data) {
            if data {
                st.stream_consumed(id, n);
            }
            st.consumed(n);
        }
        let wake_writer = was_empty && !st.out.is_empty();
        if wake_writer {
            inner.writer.wake();
        }
        Poll::Ready(Some(Ok(item)))
    }

    /// Ready once the stream's work is moot: the peer reset it (on the client: the visitor
    /// left, so the local request it made can go), the session ended, or the session's streams
    /// were stopped. A reset of our own is seen only by a poll that comes for another reason.
    pub fn poll_abandoned(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.inner().lock();
        if st.dead.is_some() || st.streams_stopped {
            return Poll::Ready(());
        }
        match st.streams.get_mut(&self.handle.id) {
            Some(s) if s.reset.is_none() => {
                if !s
                    .reset_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    s.reset_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// See [`poll_abandoned`](Self::poll_abandoned).
    pub async fn abandoned(&self) {
        poll_fn(|cx| self.poll_abandoned(cx)).await
    }

    /// The next item from the peer; `None` once its half has ended.
    pub async fn recv(&self) -> Option<Result<Item, MuxError>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Sends what fits of `data` now (stream and session credit, outbox room) as DATA frames;
    /// returns how much was taken.
    pub fn poll_send(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<Result<usize, MuxError>> {
        self.poll_send_fin(cx, data, false)
    }

    /// [`poll_send`](Self::poll_send), ending our half with the last frame if `fin` and all of
    /// `data` was taken.
    fn poll_send_fin(
        &self,
        cx: &mut Context<'_>,
        data: &[u8],
        fin: bool,
    ) -> Poll<Result<usize, MuxError>> {
        let id = self.handle.id;
        let inner = self.inner();
        let mut st = inner.lock();
        let st = &mut *st;
        let s = match st.sending(id) {
            Ok(s) => s,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if s.send_done {
            return Poll::Ready(Err(MuxError::Closed));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if s.send_credit == 0 {
            s.send_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if st.send_credit == 0 {
            push_waker(&mut st.credit_waiters, cx.waker());
            return Poll::Pending;
        }
        // Our own data in the outbox (the rest is owed control frames, which never wait).
        if st.out.len() - st.control.min(st.out.len()) >= MAX_OUTBOX {
            push_waker(&mut st.out_waiters, cx.waker());
            return Poll::Pending;
        }
        let s = st.streams.get_mut(&id).expect("stream present");
        let n = data
            .len()
            .min(s.send_credit as usize)
            .min(st.send_credit as usize)
            .min(MAX_OUTBOX);
        s.send_credit -= n as u32;
        let last = fin && n == data.len();
        s.send_done |= last;
        st.send_credit -= n as u64;
        let was_empty = st.out.is_empty();
        if n >= OWN_MESSAGE {
            // A bulk write: room for all the outbox may hold at once, so the frames that follow
            // are not copied again each time the buffer doubles (~5% of a large download's CPU).
            let room = (2 * MAX_OUTBOX + MAX_OUTBOX / 16).saturating_sub(st.out.len());
            st.out
                .reserve(room.max(n + FRAME_HEADER_LEN * n.div_ceil(MAX_DATA_FRAME)));
        }
        let mut chunks = data[..n].chunks(MAX_DATA_FRAME).peekable();
        while let Some(chunk) = chunks.next() {
            let flags = if last && chunks.peek().is_none() {
                FLAG_FIN
            } else {
                0
            };
            st.frame(FRAME_DATA, flags, id, chunk);
        }
        if was_empty {
            inner.writer.wake();
        }
        Poll::Ready(Ok(n))
    }

    /// Sends all of `data`, waiting for credit as needed.
    pub async fn send(&self, mut data: &[u8]) -> Result<(), MuxError> {
        while !data.is_empty() {
            let n = poll_fn(|cx| self.poll_send(cx, data)).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Sends all of `data` and ends our half: its last DATA frame carries FIN, one frame fewer
    /// than [`send`](Self::send) and then [`finish`](Self::finish).
    pub async fn send_last(&self, mut data: &[u8]) -> Result<(), MuxError> {
        if data.is_empty() {
            return self.finish();
        }
        while !data.is_empty() {
            let n = poll_fn(|cx| self.poll_send_fin(cx, data, true)).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Sends a head: the answering head of a stream the peer opened (`trailers` false) or the
    /// trailers that end our half (`trailers` true). `fin` ends our half after the head.
    pub async fn send_head(&self, head: Bytes, trailers: bool, fin: bool) -> Result<(), MuxError> {
        if head.len() > MAX_HEAD_FRAME {
            return Err(MuxError::HeadTooLarge(head.len()));
        }
        let id = self.handle.id;
        let inner = self.inner();
        poll_fn(|cx| {
            let mut st = inner.lock();
            let st = &mut *st;
            let s = match st.sending(id) {
                Ok(s) => s,
                Err(e) => return Poll::Ready(Err(e)),
            };
            if s.send_done || (!trailers && s.head_sent) {
                return Poll::Ready(Err(MuxError::Closed));
            }
            if st.send_credit < head.len() as u64 {
                push_waker(&mut st.credit_waiters, cx.waker());
                return Poll::Pending;
            }
            st.send_credit -= head.len() as u64;
            let s = st.streams.get_mut(&id).expect("stream present");
            s.head_sent = true;
            let mut flags = 0;
            if trailers {
                flags |= FLAG_TRAILERS | FLAG_FIN;
            }
            if fin || trailers {
                flags |= FLAG_FIN;
                s.send_done = true;
            }
            let was_empty = st.out.is_empty();
            st.frame(FRAME_HEADERS, flags, id, &head);
            if was_empty {
                inner.writer.wake();
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Ends our half (a visitor's FIN, the end of a body).
    pub fn finish(&self) -> Result<(), MuxError> {
        let id = self.handle.id;
        let inner = self.inner();
        let mut st = inner.lock();
        let s = st.sending(id)?;
        if s.send_done {
            return Ok(());
        }
        s.send_done = true;
        let was_empty = st.out.is_empty();
        st.frame(FRAME_DATA, FLAG_FIN, id, &[]);
        drop(st);
        if was_empty {
            inner.writer.wake();
        }
        Ok(())
    }

    /// Aborts the stream both ways with `code` (`RESET_*`) and a reason for the peer.
    pub fn reset(&self, code: u32, reason: &str) {
        let inner = self.inner();
        let mut st = inner.lock();
        if st.dead.is_some() {
            return;
        }
        let was_empty = st.out.is_empty();
        st.reset_local(self.handle.id, code, reason);
        let wake_writer = was_empty && !st.out.is_empty();
        drop(st);
        if wake_writer {
            inner.writer.wake();
        }
    }

    /// The stream as a byte stream (upgrades, TCP): reads return DATA, writes send DATA,
    /// shutdown ends our half. Heads or trailers arriving are an error.
    pub fn into_io(self) -> StreamIo {
        StreamIo {
            stream: self,
            pending: Bytes::new(),
        }
    }
}

/// A [`MuxStream`] as `AsyncRead + AsyncWrite`. See [`MuxStream::into_io`].
pub struct StreamIo {
    stream: MuxStream,
    /// The unread rest of the last DATA item.
    pending: Bytes,
}

impl StreamIo {
    /// The stream underneath.
    pub fn stream(&self) -> &MuxStream {
        &self.stream
    }
}

impl AsyncRead for StreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(this.stream.poll_recv(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                Some(Ok(Item::Data(d))) => this.pending = d,
                Some(Ok(_)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a head on a stream that carries bytes",
                    )))
                }
            }
        }
    }
}

impl AsyncWrite for StreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream.poll_send(cx, buf).map_err(Into::into)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are the writer task's from here on.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.stream.finish().map_err(Into::into))
    }
}

impl Stream for StreamIo {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Some(Ok(std::mem::take(&mut self.pending))));
        }
        match std::task::ready!(self.stream.poll_recv(cx)) {
            None => Poll::Ready(None),
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Some(Ok(Item::Data(d))) => Poll::Ready(Some(Ok(d))),
            Some(Ok(_)) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a head on a stream that carries bytes",
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::{
        tungstenite::{protocol::Role as WsRole, Message as TMessage},
        WebSocketStream,
    };

    type Pipe = tokio::io::DuplexStream;

    /// Both ends of a WebSocket on a pipe of `buffer` bytes: a client's and a server's.
    async fn ws_pair(buffer: usize) -> (ws::Socket<Pipe>, ws::Socket<Pipe>) {
        let (a, b) = tokio::io::duplex(buffer);
        (
            ws::Socket::new(a, ws::Role::Client),
            ws::Socket::new(b, ws::Role::Server),
        )
    }

    /// A raw peer (tungstenite, the client end) and our server end.
    async fn peer_pair(buffer: usize) -> (WebSocketStream<Pipe>, ws::Socket<Pipe>) {
        let (a, b) = tokio::io::duplex(buffer);
        let cfg = Some(crate::protocol::websocket_config());
        let peer = WebSocketStream::from_raw_socket(a, WsRole::Client, cfg).await;
        (peer, ws::Socket::new(b, ws::Role::Server))
    }

    /// A connector (the client, accepting streams) and an acceptor (the server, opening them),
    /// each driven by a task; the connector's streams go to the returned channel.
    async fn pair(
        stall: Duration,
    ) -> (
        Session,
        tokio::sync::mpsc::UnboundedReceiver<MuxStream>,
        Session,
    ) {
        // A tiny pipe checks correctness under constant backpressure.
        let (a, b) = ws_pair(64).await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let client_cfg = Config {
            stall_timeout: stall,
            ..Config::new(true)
        };
        let (client, driver) = start(a, Role::Connector, client_cfg);
        tokio::spawn(driver.run(move |s| {
            let _ = tx.send(s);
        }));
        let (server, driver) = start(b, Role::Acceptor, Config::new(false));
        tokio::spawn(driver.run(|_| panic!("the server accepts no streams")));
        (client, rx, server)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    async fn read_all(stream: &MuxStream) -> (Vec<u8>, Option<Bytes>) {
        let mut got = Vec::new();
        let mut trailers = None;
        while let Some(item) = stream.recv().await {
            match item.unwrap() {
                Item::Data(d) => got.extend_from_slice(&d),
                Item::Trailers(t) => trailers = Some(t),
                Item::Head(h) => panic!("unexpected head {h:?}"),
            }
        }
        (got, trailers)
    }

    #[tokio::test]
    async fn heads_bodies_and_trailers_cross_both_ways_exactly() {
        let (_client, mut accepted, server) = pair(Duration::from_secs(60)).await;
        // Several times both windows, in both directions at once.
        let up = pattern(3 * STREAM_WINDOW as usize + 12345);
        let down = pattern(5 * STREAM_WINDOW as usize + 777);
        let opened = server
            .open(Bytes::from_static(b"request"), false)
            .await
            .unwrap();
        let theirs = accepted.recv().await.unwrap();
        assert_eq!(
            theirs.recv().await.unwrap().unwrap(),
            Item::Head("request".into())
        );
        let (up2, down2) = (up.clone(), down.clone());
        let sender = tokio::spawn({
            let opened = opened.clone();
            async move {
                opened.send(&up2).await.unwrap();
                opened.finish().unwrap();
            }
        });
        let answer = tokio::spawn({
            let theirs = theirs.clone();
            async move {
                theirs
                    .send_head("response".into(), false, false)
                    .await
                    .unwrap();
                theirs.send(&down2).await.unwrap();
                theirs
                    .send_head("trailers".into(), true, true)
                    .await
                    .unwrap();
            }
        });
        let (got_up, _) = read_all(&theirs).await;
        assert_eq!(
            opened.recv().await.unwrap().unwrap(),
            Item::Head("response".into())
        );
        let (got_down, trailers) = read_all(&opened).await;
        sender.await.unwrap();
        answer.await.unwrap();
        assert!(got_up == up, "upload intact ({} bytes)", got_up.len());
        assert!(
            got_down == down,
            "download intact ({} bytes)",
            got_down.len()
        );
        assert_eq!(trailers, Some(Bytes::from_static(b"trailers")));
    }

    #[tokio::test]
    async fn many_streams_at_once_keep_their_bytes_apart() {
        let (_client, mut accepted, server) = pair(Duration::from_secs(60)).await;
        let echo = tokio::spawn(async move {
            let mut tasks = Vec::new();
            while let Some(s) = accepted.recv().await {
                tasks.push(tokio::spawn(async move {
                    let Some(Ok(Item::Head(h))) = s.recv().await else {
                        panic!("no head")
                    };
                    s.send_head(h, false, false).await.unwrap();
                    let (body, _) = read_all(&s).await;
                    s.send(&body).await.unwrap();
                    s.finish().unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        let mut clients = Vec::new();
        for i in 0..64u32 {
            let server = server.clone();
            clients.push(tokio::spawn(async move {
                let body: Vec<u8> = (0..(i as usize * 997))
                    .map(|j| (j as u32 ^ i) as u8)
                    .collect();
                let s = server
                    .open(Bytes::from(i.to_string()), false)
                    .await
                    .unwrap();
                s.send(&body).await.unwrap();
                s.finish().unwrap();
                assert_eq!(
                    s.recv().await.unwrap().unwrap(),
                    Item::Head(i.to_string().into())
                );
                let (echoed, _) = read_all(&s).await;
                assert!(echoed == body, "stream {i}");
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
        drop(server);
        drop(echo);
    }

    #[tokio::test]
    async fn many_large_transfers_with_pausing_readers_all_complete() {
        // More data in flight than the session's credit, readers that pause: every transfer must
        // finish (credit always comes back), none may stall the others for good.
        let (_client, mut accepted, server) = pair(Duration::from_secs(60)).await;
        let served = tokio::spawn(async move {
            let mut n = 0u32;
            while let Some(s) = accepted.recv().await {
                n += 1;
                let size = 1_000_000 + (n as usize * 37_111) % 1_500_000;
                tokio::spawn(async move {
                    let Some(Ok(Item::Head(_))) = s.recv().await else {
                        panic!("no head")
                    };
                    s.send_head("ok".into(), false, false).await.unwrap();
                    s.send(&pattern(size)).await.unwrap();
                    s.finish().unwrap();
                });
            }
        });
        let mut readers = Vec::new();
        for i in 0..24u32 {
            let server = server.clone();
            readers.push(tokio::spawn(async move {
                let s = server.open("get".into(), true).await.unwrap();
                let mut got = 0usize;
                let mut items = 0u32;
                while let Some(item) = s.recv().await {
                    if let Item::Data(d) = item.unwrap() {
                        got += d.len();
                    }
                    items += 1;
                    if (items + i) % 7 == 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                got
            }));
        }
        let mut total = 0;
        for r in readers {
            total += tokio::time::timeout(Duration::from_secs(60), r)
                .await
                .expect("a transfer stalled")
                .unwrap();
        }
        assert!(total > 24 * 1_000_000);
        served.abort();
    }

    #[tokio::test]
    async fn resets_and_dropped_handles_reach_the_other_side() {
        let (_client, mut accepted, server) = pair(Duration::from_secs(60)).await;
        let opened = server.open("a".into(), false).await.unwrap();
        let theirs = accepted.recv().await.unwrap();
        theirs.recv().await.unwrap().unwrap();
        theirs.reset(crate::protocol::RESET_UNREACHABLE, "nothing listens");
        let err = opened.recv().await.unwrap().unwrap_err();
        assert_eq!(
            err,
            MuxError::Reset {
                code: crate::protocol::RESET_UNREACHABLE,
                reason: "nothing listens".into()
            }
        );
        assert!(
            opened.send(b"x").await.is_err(),
            "a reset stream takes no data"
        );

        let opened = server.open("b".into(), false).await.unwrap();
        let theirs = accepted.recv().await.unwrap();
        drop(opened);
        theirs.recv().await.unwrap().unwrap(); // the head was queued before the reset
        assert!(matches!(
            theirs.recv().await,
            Some(Err(MuxError::Reset {
                code: RESET_CANCEL,
                ..
            }))
        ));
    }

    /// An answer sent whole (FIN) and then the stream dropped before the request's end came
    /// (the answerer had read all it needed): the asker still reads the whole answer, and only
    /// its sending fails.
    #[tokio::test]
    async fn a_reset_after_a_whole_half_leaves_that_half_readable() {
        let (_client, mut accepted, server) = pair(Duration::from_secs(60)).await;
        let opened = server.open("upload".into(), false).await.unwrap();
        let theirs = accepted.recv().await.unwrap();
        theirs.recv().await.unwrap().unwrap();
        theirs
            .send_head("answer".into(), false, false)
            .await
            .unwrap();
        theirs.send(b"the whole answer").await.unwrap();
        theirs.finish().unwrap();
        drop(theirs);
        assert!(matches!(opened.recv().await, Some(Ok(Item::Head(_)))));
        let mut got = Vec::new();
        while let Some(item) = opened.recv().await {
            match item.unwrap() {
                Item::Data(d) => got.extend_from_slice(&d),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, b"the whole answer");
        // The reset has arrived by now: the rest of the upload is refused.
        let refused = loop {
            match opened.send(b"more").await {
                Ok(()) => tokio::task::yield_now().await,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                refused,
                MuxError::Reset {
                    code: RESET_CANCEL,
                    ..
                }
            ),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn a_stream_whose_reader_stalls_is_reset_and_gives_its_credit_back() {
        let (client, mut accepted, server) = pair(Duration::from_millis(200)).await;
        let opened = server.open("upload".into(), false).await.unwrap();
        let theirs = accepted.recv().await.unwrap();
        // The client's reader takes the head, then nothing: the upload fills the window.
        theirs.recv().await.unwrap().unwrap();
        let upload = opened.send(&pattern(2 * STREAM_WINDOW as usize)).await;
        assert!(
            matches!(
                upload,
                Err(MuxError::Reset {
                    code: RESET_STALLED,
                    ..
                })
            ),
            "{upload:?}"
        );
        // Its unread data no longer holds session credit: a new stream moves a window freely.
        let other = server.open("next".into(), false).await.unwrap();
        let next = accepted.recv().await.unwrap();
        next.recv().await.unwrap().unwrap();
        let reader = tokio::spawn(async move { read_all(&next).await.0.len() });
        other
            .send(&pattern(STREAM_WINDOW as usize * 3))
            .await
            .unwrap();
        other.finish().unwrap();
        assert_eq!(reader.await.unwrap(), STREAM_WINDOW as usize * 3);
        let st = client.inner.lock();
        assert_eq!(
            st.recv_credit + st.recv_unacked,
            u64::from(SESSION_WINDOW),
            "the reader holds nothing: all it received is given back or about to be"
        );
    }

    #[tokio::test]
    async fn held_data_keeps_its_credit_until_dropped_and_a_holder_that_stops_is_reset() {
        let (client, mut accepted, server) = pair(Duration::from_millis(300)).await;
        let opened = server.open("upload".into(), false).await.unwrap();
        let theirs = accepted.recv().await.unwrap();
        theirs.recv().await.unwrap().unwrap();
        let sender = tokio::spawn(async move {
            let sent = opened.send(&pattern(3 * STREAM_WINDOW as usize)).await;
            (opened, sent)
        });
        // The reader takes a window's worth and keeps it (a write buffer that a socket does not
        // drain): the sender gets no more credit, although the queue is empty.
        let mut kept = Vec::new();
        let mut taken = 0;
        while taken < STREAM_WINDOW as usize {
            match poll_fn(|cx| theirs.poll_recv_held(cx)).await {
                Some(Ok(Item::Data(d))) => {
                    taken += d.len();
                    kept.push(d);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(taken, STREAM_WINDOW as usize, "no byte beyond the window");
        {
            let st = client.inner.lock();
            assert_eq!(st.streams[&theirs.id()].held, taken);
            assert_eq!(
                st.recv_credit + st.recv_unacked,
                u64::from(SESSION_WINDOW) - taken as u64,
                "what the reader holds is not given back"
            );
        }
        // Dropping what it kept gives the credit back: the sender moves on.
        kept.clear();
        let mut more = 0;
        while more < STREAM_WINDOW as usize {
            match poll_fn(|cx| theirs.poll_recv_held(cx)).await {
                Some(Ok(Item::Data(d))) => {
                    more += d.len();
                    kept.push(d);
                }
                other => panic!("{other:?}"),
            }
        }
        // Then it stops dropping: the stall check resets the stream although nothing waits in
        // its queue, and the held bytes still give the session's credit back when dropped.
        let (_opened, sent) = sender.await.unwrap();
        assert!(
            matches!(
                sent,
                Err(MuxError::Reset {
                    code: RESET_STALLED,
                    ..
                })
            ),
            "{sent:?}"
        );
        drop(kept);
        let st = client.inner.lock();
        assert_eq!(st.streams.get(&theirs.id()).map_or(0, |s| s.held), 0);
        assert_eq!(
            st.recv_credit + st.recv_unacked,
            u64::from(SESSION_WINDOW),
            "everything held was given back"
        );
    }

    #[tokio::test]
    async fn the_end_of_a_session_fails_everything_waiting_on_it() {
        let (a, b) = ws_pair(1 << 16).await;
        let (client, driver) = start(a, Role::Connector, Config::new(true));
        let client_driver = tokio::spawn(driver.run(|_| {}));
        let (server, driver) = start(b, Role::Acceptor, Config::new(false));
        let server_driver = tokio::spawn(driver.run(|_| {}));
        let s = server.open("x".into(), false).await.unwrap();
        let waiting = tokio::spawn(async move { s.recv().await });
        client.closing().close();
        assert_eq!(client_driver.await.unwrap(), Ok(()));
        assert_eq!(server_driver.await.unwrap(), Ok(()));
        assert!(matches!(
            waiting.await.unwrap(),
            Some(Err(MuxError::SessionEnded(_)))
        ));
        assert!(server.is_closed());
        assert!(server.open("y".into(), true).await.is_err());
    }

    /// Writes raw frames as one binary message.
    fn frames(list: &[(u8, u8, u32, &[u8])]) -> TMessage {
        let mut out = BytesMut::new();
        for (ty, flags, id, payload) in list {
            put_header(&mut out, *ty, *flags, *id, payload.len());
            out.extend_from_slice(payload);
        }
        TMessage::Binary(out.freeze())
    }

    /// Runs an acceptor against a hostile peer that sends `msgs`; returns how its driver ended.
    async fn acceptor_against(msgs: Vec<TMessage>) -> Result<(), String> {
        acceptor_with(Config::new(false), msgs).await
    }

    /// [`acceptor_against`] with the acceptor's settings.
    async fn acceptor_with(config: Config, msgs: Vec<TMessage>) -> Result<(), String> {
        let (peer, ours) = peer_pair(1 << 20).await;
        let (server, driver) = start(ours, Role::Acceptor, config);
        // A stream the server opened, so that frames for id 1 are legitimate.
        let _s = server.open("req".into(), false).await.unwrap();
        let (mut sink, mut read) = peer.split();
        let drain = tokio::spawn(async move { while let Some(Ok(_)) = read.next().await {} });
        for m in msgs {
            let _ = sink.send(m).await;
        }
        let result = driver.run(|_| {}).await;
        drop(sink);
        drain.abort();
        result
    }

    /// A body that knows it has ended after its data goes out as one DATA frame carrying FIN,
    /// not the data and then an empty frame to end the stream.
    #[tokio::test]
    async fn a_body_s_last_data_carries_the_stream_s_fin() {
        let (peer, ours) = peer_pair(1 << 20).await;
        let (_client, driver) = start(ours, Role::Connector, Config::new(true));
        let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(driver.run(move |s| {
            let _ = tx.send(s);
        }));
        let (mut sink, mut read) = peer.split();
        sink.send(frames(&[(FRAME_OPEN, FLAG_FIN, 1, b"req")]))
            .await
            .unwrap();
        let stream = accepted.recv().await.unwrap();
        assert_eq!(
            stream.recv().await.unwrap().unwrap(),
            Item::Head("req".into())
        );
        stream
            .send_head("answer".into(), false, false)
            .await
            .unwrap();
        let body = crate::http_util::full(Bytes::from_static(b"abc"));
        crate::mux_body::send_body(&stream, body).await.unwrap();
        assert!(matches!(stream.send(b"x").await, Err(MuxError::Closed)));

        let mut seen = Vec::new();
        let ended = async {
            while let Some(Ok(TMessage::Binary(mut msg))) = read.next().await {
                while msg.len() >= FRAME_HEADER_LEN {
                    let (ty, flags) = (msg[0], msg[1]);
                    let len = u32::from_be_bytes(msg[6..10].try_into().unwrap()) as usize;
                    let payload = msg.slice(FRAME_HEADER_LEN..FRAME_HEADER_LEN + len);
                    msg = msg.slice(FRAME_HEADER_LEN + len..);
                    if ty == FRAME_DATA || ty == FRAME_HEADERS {
                        seen.push((ty, flags, payload));
                        if flags & FLAG_FIN != 0 {
                            return;
                        }
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), ended)
            .await
            .expect("the stream ends");
        assert_eq!(
            seen,
            [
                (FRAME_HEADERS, 0, Bytes::from_static(b"answer")),
                (FRAME_DATA, FLAG_FIN, Bytes::from_static(b"abc")),
            ]
        );
    }

    #[tokio::test]
    async fn protocol_violations_end_the_session_with_a_reason() {
        let too_much = vec![0u8; MAX_DATA_FRAME + 1];
        let cases: Vec<(Vec<TMessage>, &str)> = vec![
            (
                vec![frames(&[(FRAME_OPEN, 0, 2, b"x")])],
                "does not accept streams",
            ),
            (vec![frames(&[(9, 0, 1, b"")])], "unknown frame type"),
            (vec![frames(&[(FRAME_DATA, 0, 7, b"x")])], "never opened"),
            (vec![frames(&[(FRAME_DATA, 0, 1, &too_much)])], "too large"),
            (
                vec![TMessage::Binary(Bytes::from_static(&[
                    0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 1,
                ]))],
                "longer than its message",
            ),
            (
                vec![TMessage::Binary(Bytes::from_static(&[0, 0, 0]))],
                "cut off",
            ),
            (
                vec![frames(&[(FRAME_WINDOW, 0, 1, &1u32.to_be_bytes())])],
                "beyond the window",
            ),
            (
                vec![
                    frames(&[(FRAME_HEADERS, FLAG_FIN, 1, b"a")]),
                    frames(&[(FRAME_DATA, 0, 1, b"b")]),
                ],
                "after the end",
            ),
            (vec![TMessage::text("hi")], "text message"),
        ];
        for (msgs, why) in cases {
            let result = acceptor_against(msgs).await;
            let err = result.expect_err(why);
            assert!(err.contains(why), "{err:?} should say {why:?}");
        }
        // Beyond the stream's credit: a window and one byte.
        let window = vec![0u8; MAX_DATA_FRAME];
        let mut flood: Vec<TMessage> = (0..STREAM_WINDOW as usize / MAX_DATA_FRAME)
            .map(|_| frames(&[(FRAME_DATA, 0, 1, &window)]))
            .collect();
        flood.insert(0, frames(&[(FRAME_HEADERS, 0, 1, b"h")]));
        flood.push(frames(&[(FRAME_DATA, 0, 1, b"!")]));
        let err = acceptor_against(flood).await.unwrap_err();
        assert!(err.contains("stream's credit"), "{err}");
    }

    #[tokio::test]
    async fn a_peer_that_floods_without_reading_gets_backpressure_not_our_memory() {
        // A hostile server opens streams the client refuses (it allows one) and never reads the
        // refusals: the client must stop reading rather than queue refusals without end.
        let (ours, theirs) = tokio::io::duplex(16 * 1024);
        let ours = ws::Socket::new(ours, ws::Role::Client);
        let config = Config {
            max_streams: 1,
            ..Config::new(true)
        };
        let (client, driver) = start(ours, Role::Connector, config);
        let held = Arc::new(Mutex::new(Vec::new()));
        let keep = held.clone();
        let driver = tokio::spawn(driver.run(move |s| keep.lock().unwrap().push(s)));
        let (_theirs_read, mut theirs) = tokio::io::split(theirs);
        let mut sent = 0usize;
        let mut id = 1u32;
        let flood = async {
            loop {
                let mut out = BytesMut::new();
                for _ in 0..1000 {
                    put_header(&mut out, FRAME_OPEN, FLAG_FIN, id, 0);
                    id += 2;
                }
                let mut framed = Vec::new();
                // A server's binary message: unmasked, 64-bit length.
                framed.push(0x82);
                framed.push(127);
                framed.extend_from_slice(&(out.len() as u64).to_be_bytes());
                framed.extend_from_slice(&out);
                theirs.write_all(&framed).await.unwrap();
                sent += out.len();
            }
        };
        let blocked = tokio::time::timeout(Duration::from_secs(2), flood).await;
        assert!(blocked.is_err(), "the flood must end up blocked");
        assert!(sent < 8 * 1024 * 1024, "stopped reading after {sent} bytes");
        let queued = client.inner.lock().out.len();
        assert!(
            queued <= 2 * MAX_CONTROL_BACKLOG,
            "owed frames are bounded: {queued} bytes queued"
        );
        assert_eq!(held.lock().unwrap().len(), 1, "one stream accepted");
        driver.abort();
        let _ = theirs.shutdown().await;
    }

    // ---- Growing stream windows ----

    use crate::protocol::MAX_STREAM_WINDOW;

    /// A session whose two sides both offered [`MAX_STREAM_WINDOW`] in the handshake, windows
    /// growing when a whole one is consumed within `within`: `pair` with other settings, over a
    /// pipe wide enough for fast transfers.
    async fn grown_pair(
        client: Config,
        server: Config,
    ) -> (
        Session,
        tokio::sync::mpsc::UnboundedReceiver<MuxStream>,
        Session,
    ) {
        let (a, b) = ws_pair(64 * 1024).await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (client, driver) = start(a, Role::Connector, client);
        tokio::spawn(driver.run(move |s| {
            let _ = tx.send(s);
        }));
        let (server, driver) = start(b, Role::Acceptor, server);
        tokio::spawn(driver.run(|_| panic!("the server accepts no streams")));
        (client, rx, server)
    }

    /// Both sides offering `MAX_STREAM_WINDOW`; a window grows when consumed within `within`.
    fn offered(accept_streams: bool, within: Duration) -> Config {
        Config {
            grow_within: within,
            ..Config::new(accept_streams)
        }
        .windows(MAX_STREAM_WINDOW, MAX_STREAM_WINDOW)
    }

    /// The server opens a stream and the client sends `n` pattern bytes on it, then FIN: a
    /// download that the server's side receives. Returns the server's end and the client's
    /// sender (its end, once it has sent everything).
    async fn download(
        server: &Session,
        accepted: &mut tokio::sync::mpsc::UnboundedReceiver<MuxStream>,
        n: usize,
    ) -> (MuxStream, tokio::task::JoinHandle<MuxStream>) {
        let ours = server.open("get".into(), true).await.unwrap();
        let theirs = accepted.recv().await.unwrap();
        let sender = tokio::spawn(async move {
            theirs.recv().await.unwrap().unwrap();
            theirs.send(&pattern(n)).await.unwrap();
            theirs.finish().unwrap();
            theirs
        });
        (ours, sender)
    }

    /// Every stream's credit adds up exactly to its window, no window is beyond the largest
    /// offered, and the grown windows together stay within the session's budget (one stream's
    /// growth).
    fn check_windows(session: &Session) -> u32 {
        let st = session.inner.lock();
        let mut extra = 0;
        for (id, s) in &st.streams {
            assert!(s.window >= STREAM_WINDOW && s.window <= MAX_STREAM_WINDOW);
            if s.reset.is_none() {
                let accounted =
                    s.recv_credit as usize + s.recv_unacked as usize + s.queued_bytes + s.held;
                assert_eq!(accounted, s.window as usize, "stream {id}");
            }
            extra += s.window - STREAM_WINDOW;
        }
        assert_eq!(extra, st.window_extra);
        assert!(st.window_extra <= MAX_STREAM_WINDOW - STREAM_WINDOW);
        st.window_extra
    }

    fn window_of(session: &Session, stream: &MuxStream) -> u32 {
        session.inner.lock().streams[&stream.id()].window
    }

    /// Both sides offering `MAX_STREAM_WINDOW`, with a period to consume a window in that no
    /// test run misses.
    async fn offering_pair() -> (
        Session,
        tokio::sync::mpsc::UnboundedReceiver<MuxStream>,
        Session,
    ) {
        let within = Duration::from_secs(30);
        grown_pair(offered(true, within), offered(false, within)).await
    }

    /// Reads `stream` until `server` has grown its window to the most; returns the bytes read.
    async fn read_until_grown(server: &Session, stream: &MuxStream) -> usize {
        let mut got = 0;
        while window_of(server, stream) < MAX_STREAM_WINDOW {
            if let Some(Ok(Item::Data(d))) = stream.recv().await {
                got += d.len();
            }
        }
        got
    }

    #[tokio::test]
    async fn a_busy_streams_window_grows_to_the_offer_and_its_bytes_stay_exact() {
        let (_client, mut accepted, server) = offering_pair().await;
        let n = 8 * MAX_STREAM_WINDOW as usize + 4321;
        let (ours, sender) = download(&server, &mut accepted, n).await;
        let mut got = Vec::with_capacity(n);
        while let Some(item) = ours.recv().await {
            match item.unwrap() {
                Item::Data(d) => got.extend_from_slice(&d),
                other => panic!("{other:?}"),
            }
            check_windows(&server);
        }
        let _theirs = sender.await.unwrap();
        assert!(got == pattern(n), "download intact ({} bytes)", got.len());
        assert_eq!(window_of(&server, &ours), MAX_STREAM_WINDOW);
        assert_eq!(check_windows(&server), MAX_STREAM_WINDOW - STREAM_WINDOW);
        drop(ours);
        assert_eq!(
            server.inner.lock().window_extra,
            0,
            "the stream's end gives its growth back"
        );
    }

    #[tokio::test]
    async fn grown_windows_share_one_budget_per_session() {
        let (_client, mut accepted, server) = offering_pair().await;
        let n = 4 * MAX_STREAM_WINDOW as usize;
        // One busy stream takes the whole budget, and keeps it while it stays open.
        let (first, sender) = download(&server, &mut accepted, n).await;
        assert_eq!(read_bytes(&first).await.len(), n);
        let _first_sender = sender.await.unwrap();
        assert_eq!(window_of(&server, &first), MAX_STREAM_WINDOW);
        // Another busy stream then finds no budget left: it moves its bytes at the base window.
        let (second, sender) = download(&server, &mut accepted, n).await;
        assert_eq!(read_bytes(&second).await.len(), n);
        let _second_sender = sender.await.unwrap();
        assert_eq!(window_of(&server, &second), STREAM_WINDOW);
        // Once the first ends, the next busy stream gets the budget.
        drop(first);
        let (third, sender) = download(&server, &mut accepted, n).await;
        assert_eq!(read_bytes(&third).await.len(), n);
        let _third_sender = sender.await.unwrap();
        assert_eq!(window_of(&server, &third), MAX_STREAM_WINDOW);

        // Four busy at once, each checked as it reads: the windows' sum stays within the budget.
        drop((second, third));
        let mut readers = Vec::new();
        for _ in 0..4 {
            let (ours, sender) = download(&server, &mut accepted, n).await;
            let server = server.clone();
            readers.push(tokio::spawn(async move {
                let mut got = 0;
                while let Some(item) = ours.recv().await {
                    if let Item::Data(d) = item.unwrap() {
                        got += d.len();
                    }
                    check_windows(&server);
                }
                drop(sender.await.unwrap());
                got
            }));
        }
        for r in readers {
            assert_eq!(r.await.unwrap(), n);
        }
        check_windows(&server);
    }

    #[tokio::test]
    async fn a_grown_window_shrinks_back_when_other_streams_get_busy() {
        let (_client, mut accepted, server) = offering_pair().await;
        let n = 24 * MAX_STREAM_WINDOW as usize;
        let (first, sender) = download(&server, &mut accepted, n).await;
        let got = read_until_grown(&server, &first).await;
        // It keeps reading while three more streams get as busy.
        let reader = tokio::spawn({
            let first = first.clone();
            async move { got + read_bytes(&first).await.len() }
        });
        let mut others = Vec::new();
        for _ in 0..3 {
            let size = 4 * MAX_STREAM_WINDOW as usize;
            let (ours, sender) = download(&server, &mut accepted, size).await;
            let (server, first) = (server.clone(), first.clone());
            others.push(tokio::spawn(async move {
                // The first stream's smallest window while this one is busy.
                let mut smallest = MAX_STREAM_WINDOW;
                let mut got = 0;
                while let Some(item) = ours.recv().await {
                    if let Item::Data(d) = item.unwrap() {
                        got += d.len();
                    }
                    smallest = smallest.min(window_of(&server, &first));
                    check_windows(&server);
                }
                drop(sender.await.unwrap());
                assert_eq!(got, size);
                smallest
            }));
        }
        let mut smallest = MAX_STREAM_WINDOW;
        for o in others {
            smallest = smallest.min(o.await.unwrap());
        }
        assert!(
            smallest < MAX_STREAM_WINDOW,
            "the first stream gave growth back"
        );
        assert_eq!(reader.await.unwrap(), n);
        drop(sender.await.unwrap());
        check_windows(&server);
    }

    /// The server's end of a [`download`] carries bytes only, as a TCP connection's stream.
    async fn read_bytes(stream: &MuxStream) -> Vec<u8> {
        read_all(stream).await.0
    }

    #[tokio::test]
    async fn a_slow_or_stalled_reader_does_not_grow_its_window_and_holds_at_most_the_window() {
        // The default: a window must be consumed within 100 ms to grow.
        let (_client, mut accepted, server) =
            grown_pair(offered(true, GROW_WITHIN), offered(false, GROW_WITHIN)).await;
        // Slow: 64 KiB per 40 ms at most, so a window takes at least 160 ms.
        let n = 3 * STREAM_WINDOW as usize;
        let (slow, sender) = download(&server, &mut accepted, n).await;
        let mut got = 0;
        while let Some(item) = slow.recv().await {
            if let Item::Data(d) = item.unwrap() {
                got += d.len();
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let _slow_sender = sender.await.unwrap();
        assert_eq!(got, n);
        assert_eq!(window_of(&server, &slow), STREAM_WINDOW);

        // Stalled: it holds one window unread, and the sender gets no credit beyond it.
        let (stalled, sender) = download(&server, &mut accepted, n).await;
        while server.inner.lock().streams[&stalled.id()].recv_credit > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            server.inner.lock().streams[&stalled.id()].queued_bytes,
            STREAM_WINDOW as usize
        );
        assert!(!sender.is_finished(), "the sender waits for credit");
        assert_eq!(check_windows(&server), 0);
        sender.abort();
    }

    #[tokio::test]
    async fn a_grown_window_bounds_what_a_reader_that_then_stops_holds() {
        let (_client, mut accepted, server) = offering_pair().await;
        let n = 16 * MAX_STREAM_WINDOW as usize;
        let (ours, sender) = download(&server, &mut accepted, n).await;
        let got = read_until_grown(&server, &ours).await;
        // The reader stops: what the sender still has credit for arrives, and nothing more.
        while server.inner.lock().streams[&ours.id()].recv_credit > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let st = server.inner.lock();
        let s = &st.streams[&ours.id()];
        assert!(s.queued_bytes + s.recv_unacked as usize == MAX_STREAM_WINDOW as usize);
        assert!(got + s.queued_bytes < n, "the sender is held back");
        drop(st);
        assert!(!sender.is_finished());
        sender.abort();
    }

    #[tokio::test]
    async fn without_both_offers_no_window_grows_and_both_sides_interoperate() {
        let within = Duration::from_secs(30);
        // The server offered, the client (from before growing windows) did not: neither grows,
        // and the client, which accepts no credit beyond the base window, is never sent any
        // (it would end the session as a protocol violation).
        let old = Config::new(true);
        let ours_only = Config {
            grow_within: within,
            ..Config::new(false)
        }
        .windows(MAX_STREAM_WINDOW, STREAM_WINDOW);
        assert_eq!(ours_only.grow_window, STREAM_WINDOW);
        let (client, mut accepted, server) = grown_pair(old, ours_only).await;
        let n = 4 * MAX_STREAM_WINDOW as usize;
        let (ours, sender) = download(&server, &mut accepted, n).await;
        assert!(read_bytes(&ours).await == pattern(n));
        let theirs = sender.await.unwrap();
        assert_eq!(window_of(&server, &ours), STREAM_WINDOW);
        drop(theirs);
        // The other way too: the old client's reader keeps the base window.
        let up = server.open("put".into(), false).await.unwrap();
        let theirs = accepted.recv().await.unwrap();
        theirs.recv().await.unwrap().unwrap();
        let sent = tokio::spawn({
            let up = up.clone();
            async move {
                up.send(&pattern(n)).await.unwrap();
                up.finish().unwrap();
            }
        });
        assert!(read_all(&theirs).await.0 == pattern(n));
        sent.await.unwrap();
        assert_eq!(window_of(&client, &theirs), STREAM_WINDOW);
        assert!(!server.is_closed() && !client.is_closed());
    }

    #[tokio::test]
    async fn credit_beyond_the_offered_window_is_still_a_violation() {
        let grant = |inc: u32| frames(&[(FRAME_WINDOW, 0, 1, &inc.to_be_bytes())]);
        let offering = || Config::new(false).windows(MAX_STREAM_WINDOW, MAX_STREAM_WINDOW);
        // Up to the offer: fine (what ends the session is the frame after it).
        let up_to = grant(MAX_STREAM_WINDOW - STREAM_WINDOW);
        let then = frames(&[(9, 0, 1, b"")]);
        let err = acceptor_with(offering(), vec![up_to, then])
            .await
            .unwrap_err();
        assert!(err.contains("unknown frame type"), "{err}");
        // A byte more: the session ends.
        let beyond = grant(MAX_STREAM_WINDOW - STREAM_WINDOW + 1);
        let err = acceptor_with(offering(), vec![beyond]).await.unwrap_err();
        assert!(err.contains("beyond the window"), "{err}");
        // A side that offered nothing accepts nothing beyond the base window.
        let err = acceptor_with(Config::new(false), vec![grant(1)])
            .await
            .unwrap_err();
        assert!(err.contains("beyond the window"), "{err}");
    }
}
