//! The live screen `ggrok` shows when stdout is a terminal: each tunnel's URL and status, its
//! requests (or connections) and their rate, then the last requests. [`Live::render`] is a pure
//! function of the state, so tests check it without a terminal; [`frame`] makes the bytes that
//! put it on screen.
//! Piped, `ggrok` prints plain lines instead (see the crate root).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use clap::Args;

use crate::printer::Printer;

/// Options about what is shown.
#[derive(Args, Debug, Clone, Copy)]
pub struct DisplayArgs {
    /// Also show the public URL as a QR code (to open it on a phone).
    #[arg(long)]
    pub qr: bool,
}

/// Seconds the rate is averaged over.
const RATE_WINDOW: usize = 10;
/// Recent lines kept, whatever the terminal's height (bounded memory).
const RECENT_CAP: usize = 200;
/// How long leaving the screen waits for a terminal that does not take output (Ctrl-S).
const LEAVE_WITHIN: Duration = Duration::from_secs(1);

/// One tunnel's line on the screen.
#[derive(Debug, Clone)]
pub struct Row {
    /// Its name when several run.
    pub label: Option<String>,
    /// `http://localhost:3000`.
    pub target: String,
    /// The public URL once online.
    pub url: Option<String>,
    /// `online`, `connecting`, `reconnecting (attempt 2): ...`, `refused: ...`.
    pub status: String,
    /// TCP tunnel: counts connections rather than requests.
    pub tcp: bool,
    /// Requests (or connections) since start.
    pub total: u64,
    /// TCP connections open now.
    pub open: u64,
    /// Requests or connections per second, for the last [`RATE_WINDOW`] seconds.
    rate: RateWindow,
}

impl Row {
    /// A tunnel starting up.
    pub fn new(label: Option<String>, target: String, tcp: bool) -> Self {
        Self {
            label,
            target,
            url: None,
            status: "connecting".to_owned(),
            tcp,
            total: 0,
            open: 0,
            rate: RateWindow::default(),
        }
    }

    /// Counts one request or connection at `second` (seconds since start).
    pub fn count(&mut self, second: u64) {
        self.total += 1;
        self.rate.add(second);
    }
}

/// Counts per second for the last [`RATE_WINDOW`] seconds.
#[derive(Debug, Clone, Default)]
struct RateWindow {
    /// `(second, count)`, oldest first.
    seconds: VecDeque<(u64, u64)>,
}

impl RateWindow {
    fn add(&mut self, second: u64) {
        match self.seconds.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => self.seconds.push_back((second, 1)),
        }
        while self.seconds.len() > RATE_WINDOW + 1 {
            self.seconds.pop_front();
        }
    }

    /// Per second over the full seconds of the window before `now`.
    fn per_second(&self, now: u64) -> f64 {
        let from = now.saturating_sub(RATE_WINDOW as u64);
        let n: u64 = self
            .seconds
            .iter()
            .filter(|(s, _)| *s >= from && *s < now)
            .map(|(_, n)| n)
            .sum();
        n as f64 / RATE_WINDOW as f64
    }
}

/// Everything the live screen shows.
#[derive(Debug)]
pub struct Live {
    /// One per tunnel, in the order started.
    pub rows: Vec<Row>,
    /// The last lines, oldest first (already escaped).
    recent: VecDeque<String>,
    /// The QR code of the first URL, when asked for.
    qr: Option<String>,
    want_qr: bool,
    started: Instant,
    /// Something changed since the last draw.
    pub dirty: bool,
}

impl Live {
    /// A screen for `rows`.
    pub fn new(rows: Vec<Row>, want_qr: bool) -> Self {
        Self {
            rows,
            recent: VecDeque::new(),
            qr: None,
            want_qr,
            started: Instant::now(),
            dirty: true,
        }
    }

    /// Seconds since start, the clock the rates run on.
    pub fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Tunnel `i` is online at `url`.
    pub fn online(&mut self, i: usize, url: &str) {
        if self.want_qr && self.qr.is_none() {
            self.qr = qr(url);
        }
        let row = &mut self.rows[i];
        row.url = Some(url.to_owned());
        row.status = "online".to_owned();
        self.dirty = true;
    }

    /// Tunnel `i`'s status is now `status`.
    pub fn status(&mut self, i: usize, status: String) {
        self.rows[i].status = status;
        self.dirty = true;
    }

    /// Adds the lines in `text` (each ending in a newline) to the recent ones.
    pub fn push_lines(&mut self, text: &str) {
        for line in text.lines() {
            if self.recent.len() == RECENT_CAP {
                self.recent.pop_front();
            }
            self.recent.push_back(line.to_owned());
        }
        self.dirty = true;
    }

    /// The screen for a terminal of `width` × `height` at `now` (seconds since start): lines
    /// cut to the width, as many recent requests as fit below the header.
    pub fn render(&self, now: u64, width: usize, height: usize) -> Vec<String> {
        let mut out = vec![
            format!("ggrok {}  (Ctrl-C to quit)", env!("CARGO_PKG_VERSION")),
            String::new(),
        ];
        for row in &self.rows {
            let name = row
                .label
                .as_deref()
                .map(|l| format!("{l}  "))
                .unwrap_or_default();
            out.push(format!("{name}{}", row.status));
            let url = row.url.as_deref().unwrap_or("…");
            out.push(format!("  {url} -> {}", row.target));
            let rate = row.rate.per_second(now);
            out.push(if row.tcp {
                format!(
                    "  connections {} open, {} total, {rate:.1}/s",
                    row.open, row.total
                )
            } else {
                format!("  requests {} total, {rate:.1}/s", row.total)
            });
        }
        if let Some(qr) = &self.qr {
            // Only when it fits: a cut QR code does not scan.
            let lines: Vec<&str> = qr.lines().collect();
            let fits = lines.iter().all(|l| l.chars().count() <= width)
                && out.len() + 1 + lines.len() + 2 <= height;
            if fits {
                out.push(String::new());
                out.extend(lines.iter().map(|l| (*l).to_owned()));
            }
        }
        out.push(String::new());
        let room = height.saturating_sub(out.len());
        let skip = self.recent.len().saturating_sub(room);
        out.extend(self.recent.iter().skip(skip).cloned());
        out.truncate(height);
        for line in &mut out {
            if let Some((cut, _)) = line.char_indices().nth(width) {
                line.truncate(cut);
            }
        }
        out
    }
}

/// `url` as a QR code in Unicode half blocks, two modules a character.
pub fn qr(url: &str) -> Option<String> {
    let code = qrcode::QrCode::new(url.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            // Blocks drawn in the terminal's text colour read as light: inverted for the usual
            // light-on-dark terminal, as in qrcode's own example.
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}

/// The bytes that put `lines` on the terminal from the top, each line cleared to its end, and
/// the rest of the screen cleared: no flicker from clearing everything first.
pub fn frame(lines: &[String]) -> String {
    let mut out = String::from("\x1b[H");
    for line in lines {
        out.push_str(line);
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

/// The terminal's alternate screen, left (and the cursor shown again) when dropped, so the
/// user's scrollback is as it was. Written through `stdout`'s printing thread, as the
/// screens are, so that the order holds.
pub struct AltScreen {
    stdout: Printer,
}

impl AltScreen {
    /// Switches to the alternate screen and hides the cursor.
    pub fn enter(stdout: Printer) -> Self {
        stdout.print("\x1b[?1049h\x1b[?25l");
        Self { stdout }
    }
}

impl Drop for AltScreen {
    /// Leaves the alternate screen and waits (a while) until the terminal has taken it, so that
    /// what comes after goes to the shell's screen.
    fn drop(&mut self) {
        self.stdout.unshow();
        self.stdout.print("\x1b[?25h\x1b[?1049l");
        self.stdout.finish(LEAVE_WITHIN);
    }
}

/// The terminal's size, or 80 × 24 when it cannot be told.
pub fn size() -> (usize, usize) {
    terminal_size::terminal_size()
        .map(|(w, h)| (w.0 as usize, h.0 as usize))
        .unwrap_or((80, 24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_shows_status_url_counts_rate_and_the_last_requests() {
        let mut live = Live::new(
            vec![Row::new(None, "http://localhost:3000".into(), false)],
            false,
        );
        assert_eq!(
            live.render(0, 80, 24),
            [
                &format!("ggrok {}  (Ctrl-C to quit)", env!("CARGO_PKG_VERSION")),
                "",
                "connecting",
                "  … -> http://localhost:3000",
                "  requests 0 total, 0.0/s",
                "",
            ]
        );

        live.online(0, "https://web.example.com");
        for second in [0, 3, 3, 9, 10] {
            live.rows[0].count(second);
        }
        for i in 0..30 {
            live.push_lines(&format!("12:00:{i:02} GET /{i} 200 1ms 2 B\n"));
        }
        // 4 requests in seconds 0-9: 0.4/s; the one in second 10 counts from the next.
        let screen = live.render(10, 30, 12);
        assert_eq!(
            screen,
            [
                "ggrok 0.1.0  (Ctrl-C to quit)",
                "",
                "online",
                "  https://web.example.com -> h",
                "  requests 5 total, 0.4/s",
                "",
                "12:00:24 GET /24 200 1ms 2 B",
                "12:00:25 GET /25 200 1ms 2 B",
                "12:00:26 GET /26 200 1ms 2 B",
                "12:00:27 GET /27 200 1ms 2 B",
                "12:00:28 GET /28 200 1ms 2 B",
                "12:00:29 GET /29 200 1ms 2 B",
            ]
        );
        assert!(screen.iter().all(|l| l.chars().count() <= 30));
    }

    #[test]
    fn several_tunnels_tcp_counts_and_the_qr_code_when_it_fits() {
        let mut live = Live::new(
            vec![
                Row::new(Some("web".into()), "http://localhost:3000".into(), false),
                Row::new(Some("ssh".into()), "tcp://localhost:22".into(), true),
            ],
            true,
        );
        live.online(0, "http://web.localhost:8080");
        live.status(1, "reconnecting (attempt 2): connection refused".into());
        live.rows[1].open = 1;
        live.rows[1].count(0);
        let small = live.render(1, 80, 14);
        assert_eq!(
            small[2..9],
            [
                "web  online",
                "  http://web.localhost:8080 -> http://localhost:3000",
                "  requests 0 total, 0.0/s",
                "ssh  reconnecting (attempt 2): connection refused",
                "  … -> tcp://localhost:22",
                "  connections 1 open, 1 total, 0.1/s",
                "",
            ]
        );
        assert_eq!(small.len(), 9, "no room for the QR code: left out, not cut");
        let tall = live.render(1, 80, 60);
        let qr = qr("http://web.localhost:8080").unwrap();
        assert!(tall.join("\n").contains(&qr), "{}", tall.join("\n"));
    }

    #[test]
    fn recent_lines_are_bounded() {
        let mut live = Live::new(Vec::new(), false);
        for i in 0..RECENT_CAP + 50 {
            live.push_lines(&format!("{i}\n"));
        }
        assert_eq!(live.recent.len(), RECENT_CAP);
        assert_eq!(live.recent.front().map(String::as_str), Some("50"));
    }
}
