//! Running tunnels until Ctrl-C or a refusal, and what the user sees meanwhile: plain lines
//! (the URL alone on stdout, then a line per request or connection) when stdout is piped, the
//! live screen of [`screen`](crate::screen) when it is a terminal.

use std::{
    cell::RefCell, convert::Infallible, io::IsTerminal, net::SocketAddr, process::ExitCode, rc::Rc,
};

use anyhow::Context as _;
use ggrok_tunnel::{
    inspect, terminal::escape_controls, traffic::Traffic, Connection, Exchange, Status, Tunnel,
    TunnelConfig, TunnelKind,
};
use tokio::sync::{
    broadcast::{self, error::RecvError},
    watch,
};

use crate::{
    printer::{self, Printer, Stream},
    screen::{self, DisplayArgs, Live, Row},
};

/// How long the end of a run waits for stdout, then stderr, to take the last lines.
const LAST_LINES_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// A tunnel to run.
pub struct Run {
    /// What to run.
    pub config: TunnelConfig,
    /// `http://localhost:3000`, for the "forwarding" line.
    pub target: String,
    /// Its name when several run: every line says which tunnel it is about.
    pub label: Option<String>,
    /// A saved tunnel's id: the name (or port) the server gives it is remembered there.
    pub saved_id: Option<String>,
}

/// Runs `runs` side by side until Ctrl-C or until each is refused; failure if any was. With
/// `inspect`, one inspector for all of them listens from that port on (bound at once, announced
/// once the first tunnel is online).
pub async fn run_all(
    mut runs: Vec<Run>,
    display: DisplayArgs,
    inspect: Option<u16>,
) -> anyhow::Result<ExitCode> {
    // One id counter for all: the inspector lists their requests together.
    if let Some(first) = runs.first() {
        let ids = Traffic::new(first.config.ring_size, first.config.capture_limit);
        for run in &mut runs {
            let c = &mut run.config;
            c.traffic = Some(ids.sharing_ids(c.ring_size, c.capture_limit));
        }
    }
    let tunnels = runs
        .into_iter()
        .map(|run| {
            let tunnel = Tunnel::start(run.config.clone()).context("cannot start the tunnel")?;
            Ok((run, tunnel))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let inspected: Vec<_> = tunnels
        .iter()
        .filter(|(run, _)| matches!(run.config.kind, TunnelKind::Http))
        .map(|(run, tunnel)| inspect::Inspected {
            name: run
                .label
                .clone()
                .unwrap_or_else(|| inspect::CLI_TUNNEL_NAME.to_owned()),
            handle: tunnel.handle(),
        })
        .collect();
    // TCP tunnels have nothing to inspect.
    let inspector = match inspect.filter(|_| !inspected.is_empty()) {
        Some(port) => {
            let addr = inspect::spawn(port, inspected)
                .await
                .context("cannot start the inspector (--inspect=false runs without it)")?;
            Some(addr)
        }
        None => None,
    };
    let runs = tunnels;
    let live = std::io::stdout().is_terminal().then(|| {
        let rows = runs
            .iter()
            .map(|(r, _)| {
                let tcp = matches!(r.config.kind, TunnelKind::Tcp { .. });
                Row::new(r.label.clone(), r.target.clone(), tcp)
            })
            .collect();
        Rc::new(RefCell::new(Live::new(rows, display.qr)))
    });
    // Stdout and stderr (the log too) through threads of their own: lines or the screen.
    let (stdout, stderr) = (
        Printer::start(Stream::Stdout),
        Printer::start(Stream::Stderr),
    );
    printer::log_to(Some(stderr.clone()));
    let serves = runs.into_iter().enumerate().map(|(i, (run, tunnel))| {
        let out = match &live {
            Some(live) => Output::Live {
                live: live.clone(),
                i,
            },
            None => Output::lines(
                run.label.as_deref(),
                display.qr,
                stdout.clone(),
                stderr.clone(),
            ),
        };
        serve(run, tunnel, out, inspector.filter(|_| i == 0))
    });
    let all = futures_util::future::join_all(serves);
    let results = match &live {
        Some(live) => {
            let alt = screen::AltScreen::enter(stdout.clone());
            let results = tokio::select! {
                r = all => r,
                never = redraw(live, &stdout) => match never {},
            };
            drop(alt);
            // What the screen said last about tunnels that ended (refused), now that it is gone.
            for row in &live.borrow().rows {
                if row.status != "online" && row.status != "connecting" {
                    match &row.label {
                        Some(l) => stderr.print(&format!("ggrok: {l}: {}\n", row.status)),
                        None => stderr.print(&format!("ggrok: {}\n", row.status)),
                    }
                }
            }
            results
        }
        None => all.await,
    };
    printer::log_to(None);
    stdout.finish(LAST_LINES_WITHIN);
    stderr.finish(LAST_LINES_WITHIN);
    let mut code = ExitCode::SUCCESS;
    for result in results {
        match result {
            Ok(c) if c == ExitCode::SUCCESS => {}
            Ok(c) => code = c,
            Err(e) => {
                eprintln!("ggrok: {e:#}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

/// Draws the live screen when something changed, and every second for the rates.
async fn redraw(live: &RefCell<Live>, stdout: &Printer) -> Infallible {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    let mut drawn_at = u64::MAX;
    loop {
        tick.tick().await;
        let mut live = live.borrow_mut();
        let now = live.second();
        if live.dirty || now != drawn_at {
            let (width, height) = screen::size();
            stdout.show(screen::frame(&live.render(now, width, height)));
            live.dirty = false;
            drawn_at = now;
        }
    }
}

/// Where a tunnel's events go.
enum Output {
    /// Plain lines: stdout gets the URL and a line per request, stderr the rest.
    Lines {
        out_prefix: String,
        err_prefix: String,
        qr: bool,
        stdout: Printer,
        stderr: Printer,
    },
    /// Row `i` of the live screen.
    Live { live: Rc<RefCell<Live>>, i: usize },
}

impl Output {
    fn lines(label: Option<&str>, qr: bool, stdout: Printer, stderr: Printer) -> Self {
        let (out_prefix, err_prefix) = match label {
            Some(l) => (format!("{l} "), format!("ggrok: {l}: ")),
            None => (String::new(), "ggrok: ".to_owned()),
        };
        Output::Lines {
            out_prefix,
            err_prefix,
            qr,
            stdout,
            stderr,
        }
    }

    /// A remark for stderr, or a line among the screen's recent ones.
    fn note(&self, text: String) {
        match self {
            Output::Lines {
                err_prefix, stderr, ..
            } => stderr.print(&format!("{err_prefix}{text}\n")),
            Output::Live { live, .. } => live.borrow_mut().push_lines(&format!("{text}\n")),
        }
    }

    /// A status line for stderr, or the screen's status.
    fn status(&self, text: String) {
        match self {
            Output::Lines {
                err_prefix, stderr, ..
            } => stderr.print(&format!("{err_prefix}{text}\n")),
            Output::Live { live, i } => live.borrow_mut().status(*i, text),
        }
    }

    /// A batch of events: printed, or counted and listed on the screen.
    fn events<T>(
        &self,
        first: std::sync::Arc<T>,
        events: &mut broadcast::Receiver<std::sync::Arc<T>>,
        line: fn(&mut String, &T),
        counts: fn(&mut Row, &T, u64),
    ) {
        match self {
            Output::Lines {
                out_prefix, stdout, ..
            } => print_batch(first, events, line, out_prefix, stdout),
            Output::Live { live, i } => {
                let mut live = live.borrow_mut();
                let second = live.second();
                let label = live.rows[*i].label.as_ref().map(|l| format!("{l} "));
                let mut text = String::new();
                let mut add = |live: &mut Live, e: &T| {
                    counts(&mut live.rows[*i], e, second);
                    let start = text.len();
                    line(&mut text, e);
                    if let (Some(l), true) = (&label, text.len() > start) {
                        text.insert_str(start, l);
                    }
                };
                add(&mut live, &first);
                while let Ok(e) = events.try_recv() {
                    add(&mut live, &e);
                }
                live.push_lines(&text);
            }
        }
    }
}

/// A request counts when it ends.
fn count_exchange(row: &mut Row, _: &Exchange, second: u64) {
    row.count(second);
}

/// A connection counts when it opens, and is open until it ends.
fn count_connection(row: &mut Row, c: &Connection, second: u64) {
    match c.end {
        None => {
            row.open += 1;
            row.count(second);
        }
        Some(_) => row.open = row.open.saturating_sub(1),
    }
}

/// Runs one tunnel until Ctrl-C or a final refusal; announces `inspector` once it is online.
async fn serve(
    run: Run,
    tunnel: Tunnel,
    out: Output,
    mut inspector: Option<SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let target = &run.target;
    let mut traffic = tunnel.traffic().subscribe();
    let mut shown_url: Option<String> = None;
    // Requests wake this loop; the rarer events are waited for by futures that live across its
    // turns, so that a turn does not register and drop a waiter for each of them (the Ctrl-C
    // listener allocated one) every time a request ends.
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut status = next_change(tunnel.status());
    let mut connections = next_event(tunnel.connections().subscribe());
    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                tunnel.stop().await;
                return Ok(ExitCode::SUCCESS);
            }
            (mut rx, changed) = &mut status => {
                if changed.is_err() {
                    return Ok(ExitCode::FAILURE);
                }
                let now = rx.borrow_and_update().clone();
                status = next_change(rx);
                match now {
                    // Everything a server says is untrusted: it must not write to the terminal.
                    Status::Online { url, name } => {
                        if let Some(id) = &run.saved_id {
                            if let Err(e) = crate::saved_cmds::remember_online(id, &url, &name) {
                                out.note(format!("the name it was given is not remembered for next time: {e}"));
                            }
                        }
                        let url = escape_controls(&url).into_owned();
                        let first = shown_url.as_deref() != Some(url.as_str());
                        match &out {
                            Output::Lines { out_prefix, err_prefix, qr, stdout, stderr } => {
                                if first {
                                    stdout.print(&format!("{out_prefix}{url}\n"));
                                    stderr.print(&format!("{err_prefix}forwarding {url} -> {target}\n"));
                                    if *qr {
                                        // stderr: stdout stays the URL alone, for scripts.
                                        stderr.print(&screen::qr(&url).unwrap_or_default());
                                    }
                                    if let Some(addr) = inspector.take() {
                                        stderr.print(&format!("ggrok: inspector on http://{addr}\n"));
                                    }
                                } else {
                                    stderr.print(&format!("{err_prefix}back online\n"));
                                }
                            }
                            Output::Live { live, i } => {
                                live.borrow_mut().online(*i, &url);
                                if let Some(addr) = inspector.take() {
                                    out.note(format!("inspector on http://{addr}"));
                                }
                            }
                        }
                        shown_url = Some(url);
                    }
                    Status::Reconnecting { attempt, reason } => {
                        let reason = escape_controls(&reason);
                        out.status(match &out {
                            Output::Lines { .. } => format!("{reason}; reconnecting (attempt {attempt})"),
                            Output::Live { .. } => format!("reconnecting (attempt {attempt}): {reason}"),
                        });
                    }
                    Status::Failed { message, .. } => {
                        out.status(format!("refused: {}", escape_controls(&message)));
                        return Ok(ExitCode::FAILURE);
                    }
                    Status::Connecting | Status::Stopped => {}
                }
            }
            event = traffic.recv() => match event {
                Ok(e) => out.events(e, &mut traffic, log_line, count_exchange),
                Err(RecvError::Lagged(n)) => out.note(format!("{n} requests not shown (log too slow)")),
                Err(RecvError::Closed) => return Ok(ExitCode::FAILURE),
            },
            (mut rx, event) = &mut connections => {
                match event {
                    Ok(c) => out.events(c, &mut rx, connection_line, count_connection),
                    Err(RecvError::Lagged(n)) => out.note(format!("{n} connection events not shown (log too slow)")),
                    Err(RecvError::Closed) => return Ok(ExitCode::FAILURE),
                }
                connections = next_event(rx);
            }
        }
    }
}

type Owned<R, T> = std::pin::Pin<Box<dyn std::future::Future<Output = (R, T)>>>;

/// `rx`'s next change, and `rx` back to wait for the one after.
fn next_change<T: 'static>(
    mut rx: watch::Receiver<T>,
) -> Owned<watch::Receiver<T>, Result<(), watch::error::RecvError>> {
    Box::pin(async move {
        let changed = rx.changed().await;
        (rx, changed)
    })
}

/// `rx`'s next event, and `rx` back to wait for the one after.
fn next_event<T: Clone + 'static>(
    mut rx: broadcast::Receiver<T>,
) -> Owned<broadcast::Receiver<T>, Result<T, RecvError>> {
    Box::pin(async move {
        let event = rx.recv().await;
        (rx, event)
    })
}

/// Prints `first` and every event already queued behind it as one piece, each line after
/// `prefix`. Bounded by the broadcast queue; a lag is reported by the next `recv`.
fn print_batch<T>(
    first: std::sync::Arc<T>,
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<T>>,
    line: fn(&mut String, &T),
    prefix: &str,
    stdout: &Printer,
) {
    // Room for a few lines at once: a string grown from empty reallocates on every request.
    let mut out = String::with_capacity(256);
    let mut add = |e: &T| {
        let start = out.len();
        line(&mut out, e);
        if out.len() > start {
            out.insert_str(start, prefix);
        }
    };
    add(&first);
    while let Ok(e) = events.try_recv() {
        add(&e);
    }
    stdout.print(&out);
}

/// Appends `12:01:02 203.0.113.7:51234 1520ms up 1.2 KB down 3.4 KB closed` (UTC time of
/// arrival) for a connection that has ended; nothing for one that just opened.
fn connection_line(out: &mut String, c: &Connection) {
    use std::fmt::Write;
    let Some(end) = &c.end else { return };
    push_time(out, c.opened_ms);
    let _ = write!(out, " {} {}ms up ", escape_controls(&c.from), c.duration_ms);
    push_size(out, c.bytes_up);
    out.push_str(" down ");
    push_size(out, c.bytes_down);
    out.push(' ');
    // Reasons may quote what a peer sent.
    out.push_str(&escape_controls(&end.describe()));
    out.push('\n');
}

/// Appends `HH:MM:SS` (UTC) of a Unix time in milliseconds.
fn push_time(out: &mut String, unix_ms: u64) {
    let secs = unix_ms / 1000 % 86_400;
    for (i, n) in [secs / 3600, secs / 60 % 60, secs % 60]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(b'0' + (n / 10) as u8));
        out.push(char::from(b'0' + (n % 10) as u8));
    }
}

/// Appends `n` in decimal, as `{n}` would, without `core::fmt` (which costs several times more
/// per number: the log line is the CLI's busiest output).
fn push_int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends `7 B`, `1.5 KB` or `3.0 MB`.
fn push_size(out: &mut String, n: u64) {
    use std::fmt::Write;
    let _ = match n {
        n if n < 1024 => {
            push_int(out, n);
            out.push_str(" B");
            Ok(())
        }
        n if n < 1024 * 1024 => write!(out, "{:.1} KB", n as f64 / 1024.0),
        n => write!(out, "{:.1} MB", n as f64 / (1024.0 * 1024.0)),
    };
}

/// Appends `12:01:02 GET /path 200 12ms 1.2 KB` (UTC time) and a newline to `out`, formatted
/// in place: a line per request is the CLI's busiest output.
fn log_line(out: &mut String, e: &Exchange) {
    push_time(out, e.started_ms);
    out.push(' ');
    out.push_str(&e.method);
    out.push(' ');
    // Paths are untrusted.
    out.push_str(&escape_controls(&e.path));
    out.push(' ');
    match (e.status, e.upgraded) {
        (_, true) => out.push_str("101 upgraded"),
        (Some(s), _) => push_int(out, s),
        (None, _) => out.push_str("---"),
    }
    out.push(' ');
    push_int(out, e.duration_ms);
    out.push_str("ms ");
    push_size(out, e.response_body.size);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_per_ended_connection() {
        let mut c = Connection {
            id: 1,
            from: "203.0.113.7:51234".into(),
            opened_ms: (3600 + 2 * 60 + 3) * 1000,
            duration_ms: 1520,
            bytes_up: 1536,
            bytes_down: 7,
            end: None,
        };
        let mut out = String::new();
        connection_line(&mut out, &c);
        assert_eq!(out, "", "nothing while open");
        c.end = Some(ggrok_tunnel::tcp::End::Closed);
        connection_line(&mut out, &c);
        c.end = Some(ggrok_tunnel::tcp::End::Unreachable {
            reason: "cannot connect to localhost:1: refused\n".into(),
        });
        connection_line(&mut out, &c);
        assert_eq!(
            out,
            "01:02:03 203.0.113.7:51234 1520ms up 1.5 KB down 7 B closed\n\
             01:02:03 203.0.113.7:51234 1520ms up 1.5 KB down 7 B local service unreachable: \
             cannot connect to localhost:1: refused\\n\n"
        );
    }

    #[test]
    fn numbers_in_log_lines_read_as_format_writes_them() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            1023,
            1024,
            1535,
            1536,
            1 << 20,
            (3 << 20) + 1,
        ]
        .into_iter()
        .chain([u64::from(u32::MAX), u64::MAX - 1, u64::MAX])
        {
            let mut out = String::new();
            push_int(&mut out, n);
            assert_eq!(out, format!("{n}"));
            out.clear();
            push_size(&mut out, n);
            let want = match n {
                n if n < 1024 => format!("{n} B"),
                n if n < 1024 * 1024 => format!("{:.1} KB", n as f64 / 1024.0),
                n => format!("{:.1} MB", n as f64 / (1024.0 * 1024.0)),
            };
            assert_eq!(out, want);
        }
        for s in [0u16, 7, 99, 100, 200, 599, 1000, u16::MAX] {
            let mut out = String::new();
            push_int(&mut out, s);
            assert_eq!(out, format!("{s}"));
        }
    }

    #[test]
    fn a_log_line_per_exchange() {
        let mut e = Exchange {
            id: 1,
            started_ms: (3600 + 2 * 60 + 3) * 1000 + 999,
            method: "GET".into(),
            path: "/a\nb".into(),
            status: Some(200),
            duration_ms: 12,
            remote_addr: None,
            upgraded: false,
            request_headers: Default::default(),
            response_headers: Default::default(),
            request_body: Default::default(),
            response_body: Default::default(),
            error: None,
            frames: None,
        };
        e.response_body.size = 1536;
        let mut out = String::new();
        log_line(&mut out, &e);
        e.status = None;
        e.response_body.size = 7;
        log_line(&mut out, &e);
        e.upgraded = true;
        e.response_body.size = 3 << 20;
        log_line(&mut out, &e);
        e.path = "/plain?q=1&r=a b".into();
        log_line(&mut out, &e);
        e.path = "/\"q\"".into();
        log_line(&mut out, &e);
        assert_eq!(
            out,
            "01:02:03 GET /a\\nb 200 12ms 1.5 KB\n\
             01:02:03 GET /a\\nb --- 12ms 7 B\n\
             01:02:03 GET /a\\nb 101 upgraded 12ms 3.0 MB\n\
             01:02:03 GET /plain?q=1&r=a b 101 upgraded 12ms 3.0 MB\n\
             01:02:03 GET /\"q\" 101 upgraded 12ms 3.0 MB\n"
        );
    }
}
