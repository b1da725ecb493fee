//! ggrok-desktop: the Tauri v2 app that manages tunnels from a window and the system tray.
//!
//! On launch it starts a ggrok server in-process on loopback (domain `localhost`), so a new
//! user can expose a port and open `http://NAME.localhost:PORT` without owning a server.
//!
//! Layout:
//! - [`tunnels`]: the manager of running tunnels, their status, counts and traffic.
//! - [`state`]: every user action over the saved file, the tokens and the manager, without
//!   Tauri types. The file and the keyring are shared with the `ggrok` CLI: they live in
//!   `ggrok_tunnel::saved` and `ggrok_tunnel::tokens`.
//! - [`commands`]: thin `#[tauri::command]` wrappers; [`error`]: the error they return.
//! - [`tray`]: the tray menu and icon.
//! - [`embedded`]: the in-process server.
//! - [`listening`]: the TCP ports local services listen on, for the port picker.
//! - [`server_check`]: Settings' "Test connection" (`/healthz`, then the token).
//! - [`background`]: start at login, notifications, the log file, window geometry, and their
//!   settings; [`notify`]: when a tunnel's status deserves a notification.
//!
//! Only what the integration tests in `tests/` drive is public (`background`, `embedded`,
//! `state`, `tunnels`); the rest is the app's own.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod background;
mod commands;
pub mod embedded;
mod error;
mod listening;
mod notify;
mod server_check;
pub mod state;
mod tray;
pub mod tunnels;
mod webview;

#[cfg(test)]
mod test_support;

use std::{path::PathBuf, sync::Arc};

use tauri::{AppHandle, Builder, Emitter, Manager as _, RunEvent, Runtime, WindowEvent};
use tauri_plugin_clipboard_manager::ClipboardExt;
use tracing::{info, warn};

use crate::{embedded::EmbeddedServer, state::AppState, tunnels::Manager};
use ggrok_tunnel::{saved::Store, tokens::Secrets};

/// Event carrying a [`tunnels::Event`] (status or traffic) to the window.
pub const EVENT_TUNNEL: &str = "tunnel-event";
/// Event telling the window that saved tunnels or servers changed.
pub const EVENT_CHANGED: &str = "tunnels-changed";
/// Label of the main window.
pub const MAIN_WINDOW: &str = "main";

/// Registers the app's state and commands on `builder`; tests pass
/// `tauri::test::mock_builder()`. (`run` manages the state in its setup instead.)
pub fn builder<R: Runtime>(builder: Builder<R>, state: Arc<AppState>) -> Builder<R> {
    with_commands(builder.manage(state))
}

fn with_commands<R: Runtime>(builder: Builder<R>) -> Builder<R> {
    builder.invoke_handler(tauri::generate_handler![
        commands::app_info,
        commands::list_tunnels,
        commands::expose,
        commands::update_tunnel,
        commands::delete_tunnel,
        commands::start_tunnel,
        commands::stop_tunnel,
        commands::list_traffic,
        commands::list_connections,
        commands::get_exchange,
        commands::replay,
        commands::copy_curl,
        commands::export_har,
        commands::list_servers,
        commands::save_server,
        commands::test_server,
        commands::list_listening,
        commands::delete_server,
        commands::copy_url,
        commands::open_url,
        background::background_settings,
        background::save_background_settings,
        background::open_log_folder,
    ])
}

/// Forwards manager events and saved-data changes to the window and keeps the tray in step.
/// Must be called inside the async runtime.
pub fn forward_events<R: Runtime>(app: &AppHandle<R>, state: Arc<AppState>) {
    let mut events = state.manager().subscribe();
    let mut changes = state.subscribe_changes();
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let mut shown = None;
        let mut online_as = std::collections::HashMap::new();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        // Status events come with request counts too: the file is looked at
                        // only when a tunnel comes online under a name not seen yet.
                        if let tunnels::Event::Status { tunnel_id, state: s } = &ev {
                            if let ggrok_tunnel::Status::Online { url, name } = &s.status {
                                if online_as.get(tunnel_id) != Some(url) {
                                    online_as.insert(tunnel_id.clone(), url.clone());
                                    if let Err(err) = state.remember_online(tunnel_id, url, name) {
                                        warn!(%err, "could not remember the tunnel's name");
                                    }
                                }
                            }
                        }
                        let _ = app.emit(EVENT_TUNNEL, &ev);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Missed some: have the window re-read everything.
                        let _ = app.emit(EVENT_CHANGED, ());
                    }
                    Err(_) => break,
                },
                ch = changes.recv() => match ch {
                    Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = app.emit(EVENT_CHANGED, ());
                    }
                    Err(_) => break,
                },
            }
            // Rebuild the tray only when what it shows changed, not on every request count.
            let tunnels = state.tunnels();
            let menu = tray::entries(&tunnels);
            if shown.as_ref() != Some(&menu) {
                if let Err(err) = tray::update(&app, &tunnels) {
                    warn!(%err, "tray update failed");
                }
                shown = Some(menu);
            }
        }
    });
}

fn show_main<R: Runtime>(app: &AppHandle<R>) {
    if let Some(w) = app.get_webview_window(MAIN_WINDOW) {
        let _ = w.show();
        let _ = w.unminimize();
        let _ = w.set_focus();
    }
}

fn on_tray<R: Runtime>(app: &AppHandle<R>, action: tray::Action) {
    let state = app.state::<Arc<AppState>>().inner().clone();
    match action {
        tray::Action::Open => show_main(app),
        tray::Action::Quit => {
            let app = app.clone();
            tauri::async_runtime::spawn(async move {
                state.manager().stop_all().await;
                app.exit(0);
            });
        }
        tray::Action::Toggle(id) => {
            tauri::async_runtime::spawn(async move {
                if let Err(err) = state.toggle(&id).await {
                    warn!(%err, "tray toggle failed");
                }
            });
        }
        tray::Action::Copy(id) => match state.public_url(&id) {
            Ok(url) => {
                if let Err(err) = app.clipboard().write_text(url) {
                    warn!(%err, "copy failed");
                }
            }
            Err(err) => warn!(%err, "copy failed"),
        },
    }
}

/// Where settings live: `GGROK_CONFIG_DIR` (tests, portable installs) or the OS config dir.
fn config_path() -> PathBuf {
    Store::configured_path()
}

/// Loads settings and tokens and starts the embedded server on the port asked for by
/// `GGROK_SERVER_PORT` (tests) or Settings.
async fn boot() -> std::io::Result<(Arc<AppState>, EmbeddedServer)> {
    let (store, warning) = Store::load(config_path());
    let port = std::env::var("GGROK_SERVER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .or(store.data().settings.server_port)
        .unwrap_or(embedded::DEFAULT_PORT);
    let server = EmbeddedServer::start(port).await?;
    let secrets = Secrets::from_env();
    // Probe once so a missing keyring is reported at start, not at the first token.
    let _ = secrets.get("__probe__");
    let manager = Manager::new();
    if let Some(limit) = store.data().settings.capture_limit {
        manager.set_capture_limit(limit);
    }
    let state = AppState::new(store, warning, secrets, manager, server.url.clone());
    if let Some(notice) = background::port_notice(&server) {
        state.add_warning(notice);
    }
    Ok((Arc::new(state), server))
}

/// Runs the desktop app.
pub fn run() {
    webview::configure_before_threads();
    // Tauri's event loop panics (status 101, a backtrace) when GTK cannot open the display.
    #[cfg(target_os = "linux")]
    if let Err(e) = gtk::init() {
        let var = |name| std::env::var(name).unwrap_or_else(|_| "unset".to_owned());
        eprintln!(
            "ggrok: no display to open the window on ({e}; DISPLAY {}, WAYLAND_DISPLAY {}). \
             The app needs a desktop session; on a server, run the `ggrok` command instead.",
            var("DISPLAY"),
            var("WAYLAND_DISPLAY"),
        );
        std::process::exit(1);
    }
    let app = with_commands(Builder::default())
        // First plugin: a second launch hands over to the running app and exits in its setup.
        // The embedded server, settings and keyring come after, in our setup, so a second
        // launch never starts them: it once died by a signal at that exit, with the server's
        // runtime threads busy in it.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
            show_main(app)
        }))
        .plugin(tauri_plugin_clipboard_manager::init());
    let app = background::plugins(app)
        .setup(move |app| {
            // IPC is served by the event loop, which starts after this: no command runs
            // before the state is managed.
            let (state, server) = tauri::async_runtime::block_on(boot())?;
            let hidden = background::started_hidden() || state.settings().start_hidden;
            app.manage(state.clone());
            app.manage(server);
            let handle = app.handle().clone();
            // The UI is dark only. GTK's own widgets (the list of an open `<select>`, which
            // WebKitGTK draws with GTK, and menus) follow the app's theme, which the window's
            // `theme` setting does not reach on Linux.
            handle.set_theme(Some(tauri::Theme::Dark));
            // Logged here: the logger exists only once the log plugin is set up.
            let server = app.state::<EmbeddedServer>();
            info!(url = %server.url, settings = %config_path().display(), "embedded server listening");
            if let Some(notice) = background::port_notice(&server) {
                warn!("{notice}");
            }
            // The window first: the page is already loading (Tauri created the web view before
            // this hook), and the tray's libraries and D-Bus registration can come after.
            if !hidden {
                show_main(&handle);
            }
            tray::create(&handle, &state.tunnels(), on_tray)?;
            background::spawn_notifier(&handle, state.clone());
            let st = state.clone();
            tauri::async_runtime::spawn(async move {
                // The `ggrok` CLI saves to the same file; a stat every two seconds is the
                // cheapest portable way to notice.
                let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
                loop {
                    every.tick().await;
                    st.reload_if_changed();
                }
            });
            let st = state.clone();
            tauri::async_runtime::spawn(async move {
                forward_events(&handle, st.clone());
                st.start_on_launch().await;
            });
            Ok(())
        })
        .on_window_event(|window, event| {
            // Closing the window keeps the app (and its tunnels) running in the tray.
            if let WindowEvent::CloseRequested { api, .. } = event {
                if window.label() == MAIN_WINDOW {
                    api.prevent_close();
                    let _ = window.hide();
                }
            }
        })
        .build(tauri::generate_context!())
        .expect("build tauri app");
    app.run(|_app, event| {
        if let RunEvent::ExitRequested {
            api, code: None, ..
        } = event
        {
            api.prevent_exit();
        }
    });
}

#[cfg(test)]
mod wiring_tests;
