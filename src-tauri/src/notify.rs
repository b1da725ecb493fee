//! Which tunnel status changes deserve a desktop notification, with no Tauri types so the rules
//! are unit-tested: a tunnel that was online and is not back within [`DROP_GRACE`] ("dropped"),
//! its return after such a notice ("back online"), and a refusal by the server (name taken,
//! token revoked), each once per episode. Request counts never notify. On top of that at most
//! [`MAX_PER_WINDOW`] notices are shown per [`RATE_WINDOW`], so a flapping tunnel cannot flood
//! the desktop; the ones over the limit are dropped, not queued.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use ggrok_tunnel::Status;

/// How long a tunnel may be reconnecting before the user is told: most drops (a server
/// restart, a Wi-Fi hand-over) heal within a couple of retries and are not worth a notice.
pub const DROP_GRACE: Duration = Duration::from_secs(5);
/// The rate limit's window.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Notices shown at most per [`RATE_WINDOW`], all tunnels together.
pub const MAX_PER_WINDOW: usize = 4;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Was online, has been reconnecting for [`DROP_GRACE`].
    Dropped,
    /// Online again after a [`Kind::Dropped`] notice.
    BackOnline,
    /// The server refused the tunnel for good.
    Refused,
}

/// A notice to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Saved tunnel id.
    pub tunnel_id: String,
    /// What happened.
    pub kind: Kind,
    /// Title line.
    pub title: String,
    /// Body text.
    pub body: String,
}

#[derive(Debug, Default)]
struct Track {
    label: String,
    online: bool,
    /// Set when an online tunnel started reconnecting.
    down_since: Option<Instant>,
    /// The drop was handled (noticed or rate-limited away); cleared when online again.
    drop_handled: bool,
    /// A "dropped" notice was actually shown, so "back online" is worth saying.
    drop_shown: bool,
    /// A refusal was handled; cleared when online again.
    refusal_handled: bool,
}

/// The decision state over all tunnels.
#[derive(Debug, Default)]
pub struct Notifier {
    tunnels: HashMap<String, Track>,
    shown: VecDeque<Instant>,
}

impl Notifier {
    /// An empty notifier.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a status event for the tunnel `id` (shown as `label`); returns a notice to show
    /// now, if any. Repeated statuses (request-count updates) change nothing.
    pub fn status(&mut self, id: &str, label: &str, status: &Status, now: Instant) -> Option<Note> {
        let t = self.tunnels.entry(id.to_owned()).or_default();
        t.label = label.to_owned();
        let kind = match status {
            Status::Online { .. } => {
                let back = t.drop_shown;
                *t = Track {
                    label: t.label.clone(),
                    online: true,
                    ..Track::default()
                };
                back.then_some((Kind::BackOnline, format!("{label} is back online")))
            }
            Status::Reconnecting { .. } => {
                if t.online && t.down_since.is_none() {
                    t.down_since = Some(now);
                }
                None
            }
            Status::Failed { message, .. } => {
                t.down_since = None;
                t.online = false;
                if t.refusal_handled {
                    None
                } else {
                    t.refusal_handled = true;
                    Some((Kind::Refused, message.clone()))
                }
            }
            Status::Stopped => {
                // Stopped by the user: nothing to tell, and a later start begins afresh.
                self.tunnels.remove(id);
                None
            }
            Status::Connecting => None,
        }?;
        self.admit(id, kind.0, kind.1, now)
    }

    /// Notices due at `now` (drops past their grace period).
    pub fn tick(&mut self, now: Instant) -> Vec<Note> {
        let due: Vec<String> = self
            .tunnels
            .iter()
            .filter(|(_, t)| !t.drop_handled && t.down_since.is_some_and(|d| now >= d + DROP_GRACE))
            .map(|(id, _)| id.clone())
            .collect();
        let mut notes = Vec::new();
        for id in due {
            let t = self.tunnels.get_mut(&id).expect("listed above");
            t.drop_handled = true;
            let body = format!(
                "{} lost its connection to the server and is still reconnecting",
                t.label
            );
            if let Some(n) = self.admit(&id, Kind::Dropped, body, now) {
                if let Some(t) = self.tunnels.get_mut(&id) {
                    t.drop_shown = true;
                }
                notes.push(n);
            }
        }
        notes
    }

    /// When [`Notifier::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tunnels
            .values()
            .filter(|t| !t.drop_handled)
            .filter_map(|t| t.down_since.map(|d| d + DROP_GRACE))
            .min()
    }

    /// Forgets a deleted tunnel.
    pub fn forget(&mut self, id: &str) {
        self.tunnels.remove(id);
    }

    fn admit(&mut self, id: &str, kind: Kind, body: String, now: Instant) -> Option<Note> {
        while self
            .shown
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
        {
            self.shown.pop_front();
        }
        if self.shown.len() >= MAX_PER_WINDOW {
            return None;
        }
        self.shown.push_back(now);
        let title = match kind {
            Kind::Dropped => "Tunnel offline",
            Kind::BackOnline => "Tunnel back online",
            Kind::Refused => "Tunnel refused by the server",
        };
        Some(Note {
            tunnel_id: id.to_owned(),
            kind,
            title: title.to_owned(),
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use ggrok_tunnel::protocol::RefusalKind;

    use super::*;

    fn online() -> Status {
        Status::Online {
            url: "http://demo.localhost:7070".into(),
            name: "demo".into(),
        }
    }

    fn reconnecting(attempt: u32) -> Status {
        Status::Reconnecting {
            attempt,
            reason: "connection reset".into(),
        }
    }

    fn kinds(notes: &[Note]) -> Vec<Kind> {
        notes.iter().map(|n| n.kind).collect()
    }

    #[test]
    fn a_short_drop_says_nothing() {
        let mut n = Notifier::new();
        let t0 = Instant::now();
        assert_eq!(n.status("a", "demo", &Status::Connecting, t0), None);
        assert_eq!(n.status("a", "demo", &online(), t0), None);
        assert_eq!(n.status("a", "demo", &reconnecting(1), t0), None);
        assert_eq!(n.next_deadline(), Some(t0 + DROP_GRACE));
        assert!(n.tick(t0 + DROP_GRACE / 2).is_empty());
        assert_eq!(
            n.status("a", "demo", &online(), t0 + Duration::from_secs(2)),
            None
        );
        assert!(n.tick(t0 + DROP_GRACE * 3).is_empty());
        assert_eq!(n.next_deadline(), None);
    }

    #[test]
    fn a_long_drop_notifies_once_then_back_online() {
        let mut n = Notifier::new();
        let t0 = Instant::now();
        n.status("a", "demo", &online(), t0);
        n.status("a", "demo", &reconnecting(1), t0);
        // Later retries do not restart the grace period.
        n.status("a", "demo", &reconnecting(2), t0 + Duration::from_secs(3));
        let notes = n.tick(t0 + DROP_GRACE);
        assert_eq!(kinds(&notes), [Kind::Dropped]);
        assert!(notes[0].body.contains("demo"), "{:?}", notes[0]);
        assert!(n.tick(t0 + DROP_GRACE * 4).is_empty(), "once per drop");
        n.status("a", "demo", &reconnecting(9), t0 + DROP_GRACE * 4);
        assert!(n.tick(t0 + DROP_GRACE * 8).is_empty());
        let back = n
            .status("a", "demo", &online(), t0 + DROP_GRACE * 9)
            .unwrap();
        assert_eq!(back.kind, Kind::BackOnline);
        assert_eq!(back.tunnel_id, "a");
    }

    #[test]
    fn reconnecting_before_ever_online_is_not_a_drop() {
        let mut n = Notifier::new();
        let t0 = Instant::now();
        n.status("a", "demo", &Status::Connecting, t0);
        n.status("a", "demo", &reconnecting(1), t0);
        assert!(n.tick(t0 + DROP_GRACE * 2).is_empty());
    }

    #[test]
    fn a_refusal_notifies_once_with_the_servers_reason() {
        let mut n = Notifier::new();
        let t0 = Instant::now();
        let failed = Status::Failed {
            kind: RefusalKind::NameTaken,
            message: "demo is already taken on this server".into(),
        };
        let note = n.status("a", "demo", &failed, t0).unwrap();
        assert_eq!(note.kind, Kind::Refused);
        assert_eq!(note.body, "demo is already taken on this server");
        assert_eq!(n.status("a", "demo", &failed, t0), None);
        // Online again, then refused again (token revoked later): a new episode.
        n.status("a", "demo", &online(), t0);
        assert!(n.status("a", "demo", &failed, t0).is_some());
    }

    #[test]
    fn a_stop_by_the_user_cancels_a_pending_drop() {
        let mut n = Notifier::new();
        let t0 = Instant::now();
        n.status("a", "demo", &online(), t0);
        n.status("a", "demo", &reconnecting(1), t0);
        n.status("a", "demo", &Status::Stopped, t0 + Duration::from_secs(1));
        assert!(n.tick(t0 + DROP_GRACE * 2).is_empty());
        n.status("b", "other", &online(), t0);
        n.status("b", "other", &reconnecting(1), t0);
        n.forget("b");
        assert!(n.tick(t0 + DROP_GRACE * 2).is_empty());
    }

    #[test]
    fn a_flapping_tunnel_is_rate_limited() {
        let mut n = Notifier::new();
        let mut now = Instant::now();
        let mut shown = Vec::new();
        // Drop-and-return cycles for 55 s: up to 22 notices without the limit.
        for _ in 0..11 {
            shown.extend(n.status("a", "demo", &online(), now));
            n.status("a", "demo", &reconnecting(1), now);
            now += DROP_GRACE;
            shown.extend(n.tick(now));
        }
        assert_eq!(shown.len(), MAX_PER_WINDOW);
        assert_eq!(shown[0].kind, Kind::Dropped);
        // A minute later notices flow again.
        now += RATE_WINDOW;
        n.status("a", "demo", &online(), now);
        n.status("a", "demo", &reconnecting(1), now);
        assert_eq!(kinds(&n.tick(now + DROP_GRACE)), [Kind::Dropped]);
    }
}
