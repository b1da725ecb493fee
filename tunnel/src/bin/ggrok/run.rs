//! Running tunnels until Ctrl-C or a refusal, and what the user sees meanwhile: plain lines
//! (the URL alone on stdout, then a line per request or connection) when stdout is piped, the
//! live screen of [`screen`](crate::screen) when it is a terminal.

use std::{
    cell::RefCell, collections::HashMap, convert::Infallible, io::IsTerminal, net::SocketAddr,
    process::ExitCode, rc::Rc, sync::Arc,
};

use anyhow::Context as _;
use futures_util::{
    future::LocalBoxFuture, stream::FuturesUnordered, FutureExt as _, StreamExt as _,
};
use ggrok_tunnel::{
    inspect, terminal::escape_controls, traffic::Traffic, Connection, Exchange, LocalTarget,
    Secret, Status, Tunnel, TunnelConfig, TunnelKind,
};
use tokio::sync::{
    broadcast::{self, error::RecvError},
    mpsc, oneshot, watch,
};
use tokio_util::sync::CancellationToken;

use crate::{
    printer::{self, Printer, Stream},
    screen::{self, DisplayArgs, Live, Row},
    upstream_args::parse_target,
};

/// How long `POST /api/tunnels` waits for the new tunnel to come online before answering.
const API_START_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
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
/// once the first tunnel is online), and its API can start more (`POST /api/tunnels`, on the
/// first tunnel's server with its token) and stop any: those end without ending the run.
pub async fn run_all(
    mut runs: Vec<Run>,
    display: DisplayArgs,
    inspect: Option<u16>,
) -> anyhow::Result<ExitCode> {
    let Some(first) = runs.first() else {
        anyhow::bail!("no tunnel to run");
    };
    // One id counter for all: the inspector lists their requests together.
    let ids = Traffic::new(first.config.ring_size, first.config.capture_limit);
    let template = first.config.clone();
    for run in &mut runs {
        let c = &mut run.config;
        c.traffic = Some(ids.sharing_ids(c.ring_size, c.capture_limit));
    }
    let tunnels = runs
        .into_iter()
        .map(|run| {
            let tunnel = Tunnel::start(run.config.clone()).context("cannot start the tunnel")?;
            Ok((run, tunnel))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (control, controls) = mpsc::channel(8);
    let agent = inspect::Agent::new(
        tunnels
            .iter()
            .map(|(run, tunnel)| inspect::Inspected {
                name: api_name(run),
                handle: tunnel.handle(),
            })
            .collect(),
    )
    .with_control(control);
    let inspector = match inspect {
        Some(port) => Some(
            inspect::spawn(port, agent.clone())
                .await
                .context("cannot start the inspector (--inspect=false runs without it)")?,
        ),
        None => None,
    };
    // Its rows are added as the tunnels start.
    let live = std::io::stdout()
        .is_terminal()
        .then(|| Rc::new(RefCell::new(Live::new(Vec::new(), display.qr))));
    // Stdout and stderr (the log too) through threads of their own: lines or the screen.
    let (stdout, stderr) = (
        Printer::start(Stream::Stdout),
        Printer::start(Stream::Stderr),
    );
    // On the live screen the log is shown among its last lines, not written over it.
    let captured = Arc::new(std::sync::Mutex::new(String::new()));
    printer::log_to(Some(match &live {
        Some(_) => printer::LogSink::Captured(captured.clone()),
        None => printer::LogSink::Printer(stderr.clone()),
    }));
    let runner = Runner {
        live: live.clone(),
        qr: display.qr,
        stdout: stdout.clone(),
        stderr: stderr.clone(),
        quit: CancellationToken::new(),
    };
    // What the run waits for, in one set: a request wakes only its tunnel's future.
    let mut events: FuturesUnordered<LocalBoxFuture<'_, Event>> = FuturesUnordered::new();
    let mut running = 0;
    let mut stops = HashMap::new();
    for (i, (run, tunnel)) in tunnels.into_iter().enumerate() {
        let announce = inspector.filter(|_| i == 0);
        let served = runner.serve(run, tunnel, false, announce, &mut stops);
        events.push(served.map(Event::Ended).boxed_local());
        running += 1;
    }
    events.push(next_control(controls).boxed_local());
    events.push(
        async {
            let _ = tokio::signal::ctrl_c().await;
            Event::Quit
        }
        .boxed_local(),
    );
    let alt = live
        .as_ref()
        .map(|_| screen::AltScreen::enter(stdout.clone()));
    if let Some(live) = &live {
        let (stdout, captured) = (&stdout, &captured);
        events.push(
            async move {
                let never = redraw(live, stdout, captured).await;
                match never {}
            }
            .boxed_local(),
        );
    }
    let mut results = Vec::new();
    while let Some(event) = events.next().await {
        match event {
            Event::Ended((name, from_api, result)) => {
                running -= 1;
                let stopped_by_api = stops
                    .remove(&name)
                    .is_some_and(|r: Running| r.stop.is_cancelled() && !runner.quit.is_cancelled());
                agent.remove(&name);
                // A tunnel the API started ends without failing the run; one the API started
                // or stopped, without ending it.
                if !from_api {
                    results.push(result);
                }
                if running == 0 && (runner.quit.is_cancelled() || !(from_api || stopped_by_api)) {
                    break;
                }
            }
            Event::Control(control, rx) => {
                match control {
                    Some(inspect::Control::Start(request, reply)) => {
                        let started = api_run(request, &template, &ids, &stops).and_then(|run| {
                            let tunnel =
                                Tunnel::start(run.config.clone()).map_err(|e| e.to_string())?;
                            Ok((run, tunnel))
                        });
                        match started {
                            Ok((run, tunnel)) => {
                                let shown = inspect::Inspected {
                                    name: api_name(&run),
                                    handle: tunnel.handle(),
                                };
                                agent.add(shown.clone());
                                tokio::spawn(answer_once_online(shown, reply));
                                let served = runner.serve(run, tunnel, true, None, &mut stops);
                                events.push(served.map(Event::Ended).boxed_local());
                                running += 1;
                            }
                            Err(e) => {
                                let _ = reply.send(Err(inspect::StartError::Invalid(e)));
                            }
                        }
                    }
                    Some(inspect::Control::Stop(name, reply)) => {
                        let running = stops.get(&name);
                        if let Some(r) = running {
                            r.stop.cancel();
                        }
                        let _ = reply.send(running.is_some());
                    }
                    // The agent, which holds the sender, lives as long as this run.
                    None => continue,
                }
                events.push(next_control(rx).boxed_local());
            }
            Event::Quit => {
                runner.quit.cancel();
                if running == 0 {
                    break;
                }
            }
        }
    }
    if let (Some(alt), Some(live)) = (alt, &live) {
        drop(alt);
        // The log's lines the screen had no time to show.
        stderr.print(&printer::strip_ansi(&std::mem::take(
            &mut *captured.lock().unwrap_or_else(|p| p.into_inner()),
        )));
        // What the screen said last about tunnels that ended (refused), now that it is gone.
        for row in &live.borrow().rows {
            if row.status != "online" && row.status != "connecting" {
                Output::lines(row.label.as_deref(), false, stdout.clone(), stderr.clone())
                    .status(row.status.clone());
            }
        }
    }
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

/// What a run waits for.
enum Event {
    /// A tunnel ended.
    Ended(Served),
    /// The inspector's API asked for a change (`None`: it is gone); the receiver of the next.
    Control(Option<inspect::Control>, mpsc::Receiver<inspect::Control>),
    /// Ctrl-C.
    Quit,
}

/// The API's next call.
async fn next_control(mut rx: mpsc::Receiver<inspect::Control>) -> Event {
    let control = rx.recv().await;
    Event::Control(control, rx)
}

/// A tunnel's name in the inspector's API: its label, or ngrok's name for the one tunnel of
/// the command line.
fn api_name(run: &Run) -> String {
    run.label
        .clone()
        .unwrap_or_else(|| inspect::CLI_TUNNEL_NAME.to_owned())
}

/// What a running tunnel's output and end need.
struct Runner {
    live: Option<Rc<RefCell<Live>>>,
    qr: bool,
    stdout: Printer,
    stderr: Printer,
    /// Ctrl-C: every tunnel stops.
    quit: CancellationToken,
}

/// A running tunnel, by its API name.
struct Running {
    /// Stops it (`DELETE /api/tunnels/{name}`).
    stop: CancellationToken,
    /// The saved tunnel it is, if it is one.
    saved_id: Option<String>,
}

/// A running tunnel's end: its API name, whether the API started it, and how it ended.
type Served = (String, bool, anyhow::Result<ExitCode>);

impl Runner {
    /// Runs `run` until Ctrl-C, a final refusal or its stop, which it puts in `stops`. On the
    /// live screen it gets a row of its own, or the row of the tunnel the API last ran under
    /// its name.
    fn serve(
        &self,
        run: Run,
        tunnel: Tunnel,
        from_api: bool,
        inspector: Option<SocketAddr>,
        stops: &mut HashMap<String, Running>,
    ) -> LocalBoxFuture<'static, Served> {
        let name = api_name(&run);
        let out = match &self.live {
            Some(live) => {
                let mut screen = live.borrow_mut();
                let i = match screen
                    .rows
                    .iter()
                    .position(|r| r.label == run.label && from_api)
                {
                    // A name the API used before, on its row again.
                    Some(i) => {
                        screen.rows[i].target = run.target.clone();
                        screen.rows[i].status = "connecting".to_owned();
                        i
                    }
                    None => {
                        let tcp = matches!(run.config.kind, TunnelKind::Tcp { .. });
                        screen
                            .rows
                            .push(Row::new(run.label.clone(), run.target.clone(), tcp));
                        screen.rows.len() - 1
                    }
                };
                screen.dirty = true;
                Output::Live {
                    live: live.clone(),
                    i,
                }
            }
            None => Output::lines(
                run.label.as_deref(),
                self.qr,
                self.stdout.clone(),
                self.stderr.clone(),
            ),
        };
        let stop = self.quit.child_token();
        let saved_id = run.saved_id.clone();
        stops.insert(
            name.clone(),
            Running {
                stop: stop.clone(),
                saved_id,
            },
        );
        let quit = self.quit.clone();
        Box::pin(async move {
            let result = serve(run, tunnel, out, inspector, stop, quit).await;
            (name, from_api, result)
        })
    }
}

/// Answers `POST /api/tunnels` once `tunnel` is online, refused, or still connecting after a
/// while (then without its URL yet, as `GET /api/tunnels` would show it).
async fn answer_once_online(
    tunnel: inspect::Inspected,
    reply: oneshot::Sender<Result<inspect::Inspected, inspect::StartError>>,
) {
    let mut status = tunnel.handle.watch_status();
    let settled = status.wait_for(|s| matches!(s, Status::Online { .. } | Status::Failed { .. }));
    let answer = match tokio::time::timeout(API_START_WAIT, settled).await {
        Ok(Ok(s)) => match &*s {
            Status::Failed { message, .. } => Err(inspect::StartError::Refused(format!(
                "the server refused the tunnel: {message}"
            ))),
            _ => Ok(()),
        },
        _ => Ok(()),
    };
    let _ = reply.send(answer.map(|()| tunnel));
}

/// A tunnel `POST /api/tunnels` asks for, on `template`'s server with its token and limits.
fn api_run(
    req: inspect::TunnelRequest,
    template: &TunnelConfig,
    ids: &Traffic,
    running: &HashMap<String, Running>,
) -> Result<Run, String> {
    let name = req.name.trim().to_owned();
    if name.is_empty() {
        return Err("a tunnel needs a name".to_owned());
    }
    if running.contains_key(&name) {
        return Err(format!("a tunnel named {name:?} is running"));
    }
    let inherit = |config: &mut TunnelConfig| {
        config.heartbeat = template.heartbeat;
        config.ring_size = template.ring_size;
        config.capture_limit = template.capture_limit;
        config.traffic = Some(ids.sharing_ids(config.ring_size, config.capture_limit));
    };
    let Some(addr) = &req.addr else {
        // A saved tunnel, as saved.
        if req.subdomain.is_some()
            || req.host_header.is_some()
            || !req.basic_auth.is_empty()
            || req.remote_addr.is_some()
        {
            return Err(format!(
                "{name:?} without addr is a saved tunnel, started as saved: give addr for a new one"
            ));
        }
        let run_token = template.token.clone().map(|t| (template.server.clone(), t));
        let mut p = crate::saved_cmds::plan_saved(&name, run_token, template.ca_cert.clone())
            .map_err(|e| format!("{e:#}"))?;
        // Twice at once, each would take the name from the other in turn.
        if let Some((other, _)) = running
            .iter()
            .find(|(_, r)| r.saved_id.as_deref() == Some(p.id.as_str()))
        {
            return Err(format!("saved tunnel {name:?} is running, as {other:?}"));
        }
        inherit(&mut p.config);
        return Ok(Run {
            config: p.config,
            target: p.target,
            label: Some(name),
            saved_id: Some(p.id),
        });
    };
    let target = parse_target(addr).map_err(|e| format!("addr: {e}"))?;
    let mut config = TunnelConfig::new(template.server.clone(), target.port);
    config.token = template.token.clone();
    config.ca_cert = template.ca_cert.clone();
    inherit(&mut config);
    config.local = LocalTarget::new(target.host.as_deref().unwrap_or("localhost"), target.port);
    let http_only = |what: &str| format!("{what} is for HTTP tunnels");
    let target = match req.proto.as_str() {
        "http" | "https" => {
            config.local.upstream.tls = target.tls;
            if let Some(h) = &req.host_header {
                config.local.host_header = h.parse().map_err(|e| format!("host_header: {e}"))?;
            }
            config.subdomain = req.subdomain.filter(|s| !s.is_empty());
            config.basic_auth = match req.basic_auth.as_slice() {
                [] => None,
                [one] => Some(Secret::new(one.clone())),
                _ => return Err("basic_auth: ggrok takes one user:password".to_owned()),
            };
            config.local.url()
        }
        "tcp" => {
            if target.tls {
                return Err(http_only("an https:// addr"));
            }
            if req.host_header.is_some() || req.subdomain.is_some() || !req.basic_auth.is_empty() {
                return Err(http_only("host_header, subdomain and basic_auth"));
            }
            let remote_port = match &req.remote_addr {
                Some(a) => Some(
                    a.rsplit(':')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok())
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("remote_addr {a:?}: host:port or a port"))?,
                ),
                None => None,
            };
            config.kind = TunnelKind::Tcp { remote_port };
            format!("tcp://{}", config.local.authority())
        }
        other => return Err(format!("proto {other:?}: http or tcp")),
    };
    Ok(Run {
        config,
        target,
        label: Some(name),
        saved_id: None,
    })
}

/// Draws the live screen when something changed, and every second for the rates.
async fn redraw(
    live: &RefCell<Live>,
    stdout: &Printer,
    log: &std::sync::Mutex<String>,
) -> Infallible {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    let mut drawn_at = u64::MAX;
    loop {
        tick.tick().await;
        let mut live = live.borrow_mut();
        let logged = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
        if !logged.is_empty() {
            let mut lines = String::new();
            for line in printer::strip_ansi(&logged).lines() {
                lines.push_str(&escape_controls(line));
                lines.push('\n');
            }
            live.push_lines(&lines);
        }
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

/// Runs one tunnel until `stop` (Ctrl-C is `quit`, which stops all) or a final refusal;
/// announces `inspector` once it is online.
async fn serve(
    run: Run,
    tunnel: Tunnel,
    out: Output,
    mut inspector: Option<SocketAddr>,
    stop: CancellationToken,
    quit: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let target = &run.target;
    let mut traffic = tunnel.traffic().subscribe();
    let mut shown_url: Option<String> = None;
    // Requests wake this loop; the rarer events are waited for by futures that live across its
    // turns, so that a turn does not register and drop a waiter for each of them (the Ctrl-C
    // listener allocated one) every time a request ends.
    let mut stopped = std::pin::pin!(stop.cancelled());
    let mut status = next_change(tunnel.status());
    let mut connections = next_event(tunnel.connections().subscribe());
    loop {
        tokio::select! {
            _ = &mut stopped => {
                tunnel.stop().await;
                if !quit.is_cancelled() {
                    out.status("stopped".to_owned());
                }
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
