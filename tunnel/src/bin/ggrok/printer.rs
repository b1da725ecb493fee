//! Standard output written by a thread of its own, so that the tunnels never wait on its reader.
//!
//! The CLI runs its tunnels on one thread, and a write to a pipe nobody reads (`ggrok http 3000 |
//! less`, waiting at its first screen) blocks once the pipe's buffer is full: written from that
//! thread, the request lines froze every tunnel after some 700 requests. Here the runtime only
//! appends to a buffer. The printing thread writes a line that comes after a quiet spell at once
//! and, while lines keep coming, at most one write per [`GATHER`] (a write per batch of requests
//! was a third of a system call per request). A reader that falls [`LIMIT`] behind loses lines,
//! counted and reported on stderr when it reads again, rather than holding the tunnels or memory.

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

struct Shared {
    state: Mutex<State>,
    /// The printing thread waits on it for lines or the end; [`Printer::finish`] for `done`.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
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
    /// Starts the printing thread.
    pub fn start() -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let printing = shared.clone();
        std::thread::Builder::new()
            .name("ggrok-stdout".into())
            .spawn(move || print_until_closed(&printing))
            .expect("a thread for stdout");
        Printer(shared)
    }

    /// Queues `text` (whole lines) for stdout; drops it if the reader is [`LIMIT`] behind.
    pub fn print(&self, text: &str) {
        let mut st = self.0.lock();
        let was_empty = st.pending.is_empty();
        if !was_empty && st.pending.len() + text.len() > LIMIT {
            st.dropped += text.lines().count() as u64;
            return;
        }
        st.pending.extend_from_slice(text.as_bytes());
        drop(st);
        if was_empty {
            self.0.changed.notify_all();
        }
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
fn print_until_closed(shared: &Shared) {
    let mut out = std::io::stdout();
    let mut spare = Vec::new();
    let mut last_write: Option<Instant> = None;
    loop {
        let mut st = shared.lock();
        while st.pending.is_empty() && !st.closing {
            st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.pending.is_empty() {
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
        let dropped = std::mem::take(&mut st.dropped);
        drop(st);
        // A reader that went away (EPIPE) is not an error here: the tunnels go on.
        let _ = out.write_all(&spare).and_then(|()| out.flush());
        last_write = Some(Instant::now());
        spare.clear();
        if dropped > 0 {
            eprintln!("ggrok: {dropped} log lines not shown: stdout was not being read");
        }
    }
}
