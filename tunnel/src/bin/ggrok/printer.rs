//! Standard output and error written by threads of their own, so that the tunnels never wait on
//! a reader.
//!
//! The CLI runs its tunnels on one thread, and a write to a pipe nobody reads (`ggrok http 3000 |
//! less`, waiting at its first screen) blocks once the pipe's buffer is full: written from that
//! thread, the request lines froze every tunnel after some 700 requests. Here the runtime only
//! appends to a buffer. The printing thread writes a line that comes after a quiet spell at once
//! and, while lines keep coming, at most one write per [`GATHER`] (a write per batch of requests
//! was a third of a system call per request). A reader that falls [`LIMIT`] behind loses lines,
//! counted and reported on stderr when it reads again, rather than holding the tunnels or memory.
//! While tunnels run, stderr goes the same way: the run's remarks, and the log (a warning per TCP
//! connection to a dead local port, say) through [`log_writer`]. So does the live screen
//! ([`Printer::show`]): a terminal stopped with Ctrl-S, or slow over SSH, blocks its writes too,
//! and only the newest screen is kept for it.

use std::{
    io::Write,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// How long the printing thread waits for more lines before a write.
const GATHER: Duration = Duration::from_millis(20);
/// The most output held for a reader that does not read; lines beyond it are dropped.
const LIMIT: usize = 1 << 20;

/// A handle to the printing thread. Cheap to clone; [`Printer::finish`] prints what is left.
#[derive(Clone)]
pub struct Printer(Arc<Shared>);

/// Which of the two a [`Printer`] writes to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// The printing thread waits on it for lines or the end; [`Printer::finish`] for `done`.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// The newest screen not yet written, after `pending`; a newer one replaces it.
    screen: Option<String>,
    /// Lines dropped since the last write, for a reader that fell [`LIMIT`] behind.
    dropped: u64,
    /// No more lines will come: print what is left and stop.
    closing: bool,
    /// The thread has printed everything and stopped.
    done: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Printer {
    /// Starts a printing thread for `stream`.
    pub fn start(stream: Stream) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let printing = shared.clone();
        std::thread::Builder::new()
            .name(format!("ggrok-{}", stream.name()))
            .spawn(move || print_until_closed(&printing, stream))
            .expect("a thread for output");
        Printer(shared)
    }

    /// Queues `text` (whole lines); drops it if the reader is [`LIMIT`] behind.
    pub fn print(&self, text: &str) {
        self.print_bytes(text.as_bytes());
    }

    fn print_bytes(&self, text: &[u8]) {
        let mut st = self.0.lock();
        let was_empty = st.pending.is_empty() && st.screen.is_none();
        if !was_empty && st.pending.len() + text.len() > LIMIT {
            st.dropped += text.iter().filter(|b| **b == b'\n').count().max(1) as u64;
            return;
        }
        st.pending.extend_from_slice(text);
        drop(st);
        if was_empty {
            self.0.changed.notify_all();
        }
    }

    /// Queues `screen`, a whole screen to write after the lines queued so far, in place of any
    /// screen not written yet: a terminal that is behind gets the newest one only.
    pub fn show(&self, screen: String) {
        let mut st = self.0.lock();
        let was_empty = st.pending.is_empty() && st.screen.is_none();
        st.screen = Some(screen);
        drop(st);
        if was_empty {
            self.0.changed.notify_all();
        }
    }

    /// Drops the screen not written yet, if any, for what ends the screen.
    pub fn unshow(&self) {
        self.0.lock().screen = None;
    }

    /// Prints what is queued and stops the thread, waiting at most `within` for a reader that
    /// does not read.
    pub fn finish(&self, within: Duration) {
        let mut st = self.0.lock();
        st.closing = true;
        self.0.changed.notify_all();
        let _ = self.0.changed.wait_timeout_while(st, within, |st| !st.done);
    }
}

/// The printing thread: writes at once what comes after a quiet spell (the URL as soon as the
/// tunnel is online), and at most one write per [`GATHER`] while lines keep coming.
fn print_until_closed(shared: &Shared, stream: Stream) {
    let mut out: Box<dyn Write> = match stream {
        Stream::Stdout => Box::new(std::io::stdout()),
        Stream::Stderr => Box::new(std::io::stderr()),
    };
    let mut spare = Vec::new();
    let mut last_write: Option<Instant> = None;
    loop {
        let mut st = shared.lock();
        while st.pending.is_empty() && st.screen.is_none() && !st.closing {
            st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.pending.is_empty() && st.screen.is_none() {
            st.done = true;
            drop(st);
            shared.changed.notify_all();
            return;
        }
        let since = last_write.map_or(GATHER, |at| at.elapsed());
        if since < GATHER && !st.closing {
            st = shared
                .changed
                .wait_timeout_while(st, GATHER - since, |st| !st.closing)
                .map_or_else(|p| p.into_inner().0, |(st, _)| st);
        }
        std::mem::swap(&mut st.pending, &mut spare);
        if let Some(screen) = st.screen.take() {
            spare.extend_from_slice(screen.as_bytes());
        }
        let dropped = std::mem::take(&mut st.dropped);
        drop(st);
        // A reader that went away (EPIPE) is not an error here: the tunnels go on.
        let _ = out.write_all(&spare).and_then(|()| out.flush());
        last_write = Some(Instant::now());
        spare.clear();
        if dropped > 0 {
            let name = stream.name();
            eprintln!("ggrok: {dropped} log lines not shown: {name} was not being read");
        }
    }
}

/// Where the log goes while tunnels run (see [`log_to`]); straight to stderr otherwise.
static LOG: Mutex<Option<LogSink>> = Mutex::new(None);

/// Log bytes kept for the live screen between two draws; more are dropped.
const CAPTURED_MAX: usize = 64 * 1024;

/// Where the log goes while tunnels run.
#[derive(Clone)]
pub enum LogSink {
    /// Through this printer (stderr's, when the output is plain lines).
    Printer(Printer),
    /// Kept for the live screen, which shows the lines among its last ones: written to the
    /// terminal they would land on top of the screen.
    Captured(Arc<Mutex<String>>),
}

/// Sends the log to `sink` from now on, or (`None`) straight to stderr again.
pub fn log_to(sink: Option<LogSink>) {
    *LOG.lock().unwrap_or_else(|p| p.into_inner()) = sink;
}

/// The log's writer, for `tracing_subscriber`: one per event, which it writes in one piece.
pub fn log_writer() -> LogWriter {
    match &*LOG.lock().unwrap_or_else(|p| p.into_inner()) {
        Some(sink) => LogWriter::Sink(sink.clone()),
        None => LogWriter::Stderr(std::io::stderr()),
    }
}

/// See [`log_writer`].
pub enum LogWriter {
    Sink(LogSink),
    Stderr(std::io::Stderr),
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            LogWriter::Sink(LogSink::Printer(p)) => p.print_bytes(buf),
            LogWriter::Sink(LogSink::Captured(kept)) => {
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                if kept.len() + buf.len() <= CAPTURED_MAX {
                    kept.push_str(&String::from_utf8_lossy(buf));
                }
            }
            LogWriter::Stderr(e) => return e.write(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            LogWriter::Sink(_) => Ok(()),
            LogWriter::Stderr(e) => e.flush(),
        }
    }
}

/// `text` without its ANSI escape sequences (the log's colours).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI: ESC [ parameters, then a final byte in @..~.
        if chars.clone().next() == Some('[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}
