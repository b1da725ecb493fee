//! The app as a background resident: start at login (tauri-plugin-autostart, started hidden
//! in the tray), desktop notifications about tunnels (tauri-plugin-notification; the rules are
//! in [`crate::notify`]), a rotated log file in the OS log directory (tauri-plugin-log), the
//! window's size and position remembered (tauri-plugin-window-state), and the settings that
//! go with them, including the built-in server's port.
//!
//! The window reaches none of the plugins' own commands: everything goes through the three
//! commands here, so `capabilities/main.json` grants only those.

use std::{sync::Arc, time::Instant};

use serde::{Deserialize, Serialize};
use tauri::{plugin::TauriPlugin, AppHandle, Builder, Manager as _, Runtime, State, WebviewWindow};
use tauri_plugin_autostart::ManagerExt as _;
use tauri_plugin_log::{RotationStrategy, Target, TargetKind};
use tauri_plugin_notification::NotificationExt as _;
use tauri_plugin_window_state::StateFlags;
use tokio::sync::broadcast::error::RecvError;
use tracing::warn;

use crate::{
    embedded::{EmbeddedServer, DEFAULT_PORT},
    error::Error,
    notify::{Note, Notifier},
    state::AppState,
    tunnels::{Event, CAPTURE_LIMIT},
};
use ggrok_tunnel::traffic::MAX_CAPTURE_LIMIT;

/// Argument the login entry starts the app with: the window stays hidden, the tray shows.
pub const HIDDEN_ARG: &str = "--hidden";
/// Name of the login entry (`~/.config/autostart/ggrok.desktop` on Linux).
pub const AUTOSTART_NAME: &str = "ggrok";
/// Log file name (without `.log`) in the OS log directory.
pub const LOG_FILE: &str = "ggrok";
/// A log file is rotated at this size...
pub const LOG_MAX_BYTES: u128 = 1 << 20;
/// ...and this many rotated files are kept, so the logs never take more than ~4 MiB.
pub const LOG_KEEP: usize = 3;

/// Registers the background plugins on the real app.
pub fn plugins<R: Runtime>(builder: Builder<R>) -> Builder<R> {
    builder
        .plugin(log_plugin(
            TargetKind::LogDir {
                file_name: Some(LOG_FILE.into()),
            },
            log_level(),
        ))
        .plugin(autostart_plugin())
        .plugin(tauri_plugin_notification::init())
        .plugin(
            tauri_plugin_window_state::Builder::default()
                // Visibility is decided at start (hidden when started at login), not restored.
                .with_state_flags(StateFlags::all() - StateFlags::VISIBLE)
                .build(),
        )
}

/// The login entry's plugin: starts this executable with [`HIDDEN_ARG`].
pub fn autostart_plugin<R: Runtime>() -> TauriPlugin<R> {
    tauri_plugin_autostart::Builder::new()
        .app_name(AUTOSTART_NAME)
        .arg(HIDDEN_ARG)
        .build()
}

/// The logger: stdout plus `target` (a file, rotated), at `level`. The app's `tracing` events
/// reach it through `tracing`'s `log` feature (no `tracing` subscriber is installed).
pub fn log_plugin<R: Runtime>(target: TargetKind, level: log::LevelFilter) -> TauriPlugin<R> {
    ggrok_tunnel::logging::QUIET_LOG_TARGETS
        .iter()
        .filter_map(|d| d.split_once('='))
        .fold(
            tauri_plugin_log::Builder::new()
                .clear_targets()
                .targets([Target::new(TargetKind::Stdout), Target::new(target)])
                .rotation_strategy(RotationStrategy::KeepSome(LOG_KEEP))
                .max_file_size(LOG_MAX_BYTES)
                .level(level),
            |b, (module, max)| {
                let max: log::LevelFilter = max.parse().expect("valid level");
                b.level_for(module.to_owned(), max.min(level))
            },
        )
        .build()
}

/// `RUST_LOG` when it is a plain level (`debug`), else `info`.
fn log_level() -> log::LevelFilter {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Info)
}

/// The app was started by the login entry.
pub fn started_hidden() -> bool {
    std::env::args().any(|a| a == HIDDEN_ARG)
}

/// Turns the login entry on or off.
pub fn set_start_at_login<R: Runtime>(app: &AppHandle<R>, on: bool) -> Result<(), Error> {
    let launcher = app.autolaunch();
    let result = if on {
        launcher.enable()
    } else {
        launcher.disable()
    };
    result.map_err(|err| Error::System(format!("could not change start at login: {err}")))
}

/// The sentence the window shows when the built-in server could not have its port.
pub fn port_notice(server: &EmbeddedServer) -> Option<String> {
    server.moved().then(|| {
        format!(
            "Port {} is taken by another program, so this computer's server uses port {} for this run: \
             http://NAME.localhost:{} links from earlier runs do not work now. Choose a free port in Settings.",
            server.requested_port,
            server.addr.port(),
            server.requested_port,
        )
    })
}

/// Settings as the Settings view shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundSettings {
    /// A login entry exists.
    pub start_at_login: bool,
    /// Desktop notifications are on.
    pub notifications: bool,
    /// The port the built-in server asks for at start.
    pub server_port: u16,
    /// The port it listens on in this run.
    pub listening_port: u16,
    /// The port it asked for at this run's start (taken when it differs from the above).
    pub requested_port: u16,
    /// Where the log files are.
    pub log_dir: String,
    /// Bytes of each body the inspector keeps.
    pub capture_limit: usize,
}

/// The Settings form.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundInput {
    /// Create or remove the login entry.
    pub start_at_login: bool,
    /// Desktop notifications on.
    pub notifications: bool,
    /// Wide type so that out-of-range input is explained rather than a decode error.
    pub server_port: i64,
    /// Bytes of each body the inspector keeps (absent: unchanged); wide for the same reason.
    #[serde(default)]
    pub capture_limit: Option<i64>,
}

fn view<R: Runtime>(
    app: &AppHandle<R>,
    state: &AppState,
    server: &EmbeddedServer,
) -> Result<BackgroundSettings, Error> {
    let settings = state.settings();
    Ok(BackgroundSettings {
        start_at_login: app
            .autolaunch()
            .is_enabled()
            .map_err(|err| Error::System(format!("could not read start at login: {err}")))?,
        notifications: !settings.notifications_off,
        server_port: settings.server_port.unwrap_or(DEFAULT_PORT),
        listening_port: server.addr.port(),
        requested_port: server.requested_port,
        log_dir: log_dir(app)?.display().to_string(),
        capture_limit: settings.capture_limit.unwrap_or(CAPTURE_LIMIT),
    })
}

fn log_dir<R: Runtime>(app: &AppHandle<R>) -> Result<std::path::PathBuf, Error> {
    app.path()
        .app_log_dir()
        .map_err(|err| Error::System(format!("no log directory: {err}")))
}

/// Start at login, notifications, the server's port and where the logs are.
#[tauri::command]
pub fn background_settings<R: Runtime>(
    app: AppHandle<R>,
    state: State<'_, Arc<AppState>>,
    server: State<'_, EmbeddedServer>,
) -> Result<BackgroundSettings, Error> {
    view(&app, &state, &server)
}

/// Saves the Settings form. A new port applies at the next start.
#[tauri::command]
pub fn save_background_settings<R: Runtime>(
    app: AppHandle<R>,
    state: State<'_, Arc<AppState>>,
    server: State<'_, EmbeddedServer>,
    input: BackgroundInput,
) -> Result<BackgroundSettings, Error> {
    let port = u16::try_from(input.server_port)
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| Error::invalid("serverPort", "The port must be between 1 and 65535."))?;
    let capture_limit = input
        .capture_limit
        .map(|n| {
            usize::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_CAPTURE_LIMIT)
                .ok_or_else(|| {
                    Error::invalid(
                        "captureLimit",
                        format!(
                            "The body capture limit must be between 0 and {} KiB.",
                            MAX_CAPTURE_LIMIT >> 10
                        ),
                    )
                })
        })
        .transpose()?;
    let current = app
        .autolaunch()
        .is_enabled()
        .unwrap_or(!input.start_at_login);
    if current != input.start_at_login {
        set_start_at_login(&app, input.start_at_login)?;
    }
    state.update_settings(|s| {
        s.notifications_off = !input.notifications;
        s.server_port = (port != DEFAULT_PORT).then_some(port);
        if let Some(limit) = capture_limit {
            s.capture_limit = (limit != CAPTURE_LIMIT).then_some(limit);
        }
    })?;
    if let Some(limit) = capture_limit {
        state.set_capture_limit(limit);
    }
    view(&app, &state, &server)
}

/// Opens the log directory in the file manager.
#[tauri::command]
pub fn open_log_folder<R: Runtime>(app: AppHandle<R>) -> Result<(), Error> {
    let dir = log_dir(&app)?;
    std::fs::create_dir_all(&dir)
        .map_err(|err| Error::System(format!("could not create {}: {err}", dir.display())))?;
    crate::webview::open_detached(&dir)
        .map_err(|err| Error::System(format!("could not open {}: {err}", dir.display())))
}

/// Turns tunnel status events into desktop notifications while the window is not in front.
pub fn spawn_notifier<R: Runtime>(app: &AppHandle<R>, state: Arc<AppState>) {
    let mut events = state.manager().subscribe();
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let mut rules = Notifier::new();
        loop {
            let deadline = rules.next_deadline();
            let due = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let notes: Vec<Note> = tokio::select! {
                ev = events.recv() => match ev {
                    Ok(Event::Status { tunnel_id, state: st }) => match state.tunnel(&tunnel_id) {
                        Ok(t) => rules.status(&tunnel_id, &t.label(), &st.status, Instant::now()).into_iter().collect(),
                        // Deleted: nothing to say about it, and nothing to keep for it.
                        Err(_) => {
                            rules.forget(&tunnel_id);
                            continue;
                        }
                    },
                    Ok(Event::Traffic { .. } | Event::Connection { .. }) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                },
                () = due => rules.tick(Instant::now()),
            };
            if notes.is_empty() || state.settings().notifications_off || window_in_front(&app) {
                continue;
            }
            for note in notes {
                if let Err(err) = app
                    .notification()
                    .builder()
                    .title(&note.title)
                    .body(&note.body)
                    .show()
                {
                    warn!(%err, "notification failed");
                }
            }
        }
    });
}

/// The user is looking at the window, which shows the status already.
fn window_in_front<R: Runtime>(app: &AppHandle<R>) -> bool {
    app.get_webview_window(crate::MAIN_WINDOW)
        .is_some_and(|w: WebviewWindow<R>| {
            w.is_visible().unwrap_or(false) && w.is_focused().unwrap_or(false)
        })
}
