//! Thin `#[tauri::command]` wrappers over [`AppState`]. Each returns `Result<T, Error>` where
//! `Error` serializes as `{ kind, message, field? }`. The list here, `build.rs` and
//! `capabilities/main.json` name the same commands.

use std::sync::Arc;

use ggrok_tunnel::ReplayEdits;
use tauri::{AppHandle, Runtime, State};
use tauri_plugin_clipboard_manager::ClipboardExt;

use crate::{
    error::Error,
    listening::ListeningPort,
    server_check::ServerCheck,
    state::{AppInfo, AppState, ServerInput, ServerView, TunnelInput, TunnelView},
    tunnels::{ConnectionRow, Detail, Summary},
};

type S<'a> = State<'a, Arc<AppState>>;

/// Startup facts and warnings.
#[tauri::command]
pub fn app_info(state: S<'_>) -> Result<AppInfo, Error> {
    Ok(state.info())
}

/// Saved tunnels with live state.
#[tauri::command]
pub fn list_tunnels(state: S<'_>) -> Result<Vec<TunnelView>, Error> {
    Ok(state.tunnels())
}

/// Validates, saves and starts a tunnel.
#[tauri::command]
pub async fn expose(state: S<'_>, input: TunnelInput) -> Result<TunnelView, Error> {
    state.expose(input).await
}

/// Edits a saved tunnel.
#[tauri::command]
pub async fn update_tunnel(
    state: S<'_>,
    id: String,
    input: TunnelInput,
) -> Result<TunnelView, Error> {
    state.update_tunnel(&id, input).await
}

/// Deletes a saved tunnel.
#[tauri::command]
pub async fn delete_tunnel(state: S<'_>, id: String) -> Result<(), Error> {
    state.delete_tunnel(&id).await
}

/// Starts a saved tunnel.
#[tauri::command]
pub async fn start_tunnel(state: S<'_>, id: String) -> Result<TunnelView, Error> {
    state.start(&id).await
}

/// Stops a tunnel.
#[tauri::command]
pub async fn stop_tunnel(state: S<'_>, id: String) -> Result<TunnelView, Error> {
    state.stop(&id).await
}

/// Recent traffic, newest first.
#[tauri::command]
pub fn list_traffic(state: S<'_>, id: String) -> Result<Vec<Summary>, Error> {
    state.traffic(&id)
}

/// A TCP tunnel's connections, newest first (open ones, then ended ones).
#[tauri::command]
pub fn list_connections(state: S<'_>, id: String) -> Result<Vec<ConnectionRow>, Error> {
    state.connections(&id)
}

/// One exchange with headers and bodies.
#[tauri::command]
pub fn get_exchange(state: S<'_>, id: String, exchange: u64) -> Result<Detail, Error> {
    state.exchange(&id, exchange)
}

/// Replays an exchange against the local service, changed as `edits` say (none: as captured).
#[tauri::command]
pub async fn replay(
    state: S<'_>,
    id: String,
    exchange: u64,
    edits: Option<ReplayEdits>,
) -> Result<Summary, Error> {
    state.replay(&id, exchange, edits.unwrap_or_default()).await
}

/// Copies an exchange's request as a curl command, built here from the recorded exchange (the
/// page cannot write arbitrary text); returns it.
#[tauri::command]
pub fn copy_curl<R: Runtime>(
    app: AppHandle<R>,
    state: S<'_>,
    id: String,
    exchange: u64,
) -> Result<String, Error> {
    let curl = state.curl(&id, exchange)?;
    app.clipboard()
        .write_text(curl.clone())
        .map_err(|e| Error::System(format!("could not copy: {e}")))?;
    Ok(curl)
}

/// Saves the given exchanges as a HAR file in the Downloads folder; returns its path.
#[tauri::command]
pub async fn export_har<R: Runtime>(
    app: AppHandle<R>,
    state: S<'_>,
    id: String,
    exchanges: Vec<u64>,
) -> Result<String, Error> {
    use tauri::Manager as _;
    let dir = app
        .path()
        .download_dir()
        .or_else(|_| app.path().home_dir())
        .map_err(|e| Error::System(format!("no folder to save into: {e}")))?;
    let path = state.export_har(&id, &exchanges, &dir)?;
    Ok(path.display().to_string())
}

/// Servers, tokens masked.
#[tauri::command]
pub async fn list_servers(state: S<'_>) -> Result<Vec<ServerView>, Error> {
    // Async: keyring look-ups may block on D-Bus and must not run on the UI thread.
    Ok(state.servers())
}

/// Adds or edits a server.
#[tauri::command]
pub async fn save_server(state: S<'_>, input: ServerInput) -> Result<ServerView, Error> {
    state.save_server(input)
}

/// Checks a server's URL and token by opening one session.
#[tauri::command]
pub async fn test_server(state: S<'_>, input: ServerInput) -> Result<ServerCheck, Error> {
    state.test_server(input).await
}

/// TCP ports listening on this machine, for the port picker.
#[tauri::command]
pub async fn list_listening(state: S<'_>) -> Result<Vec<ListeningPort>, Error> {
    // Async: reading the socket table walks /proc and must not block the UI thread.
    state.listening()
}

/// Removes a server.
#[tauri::command]
pub async fn delete_server(state: S<'_>, id: String) -> Result<(), Error> {
    state.delete_server(&id)
}

/// Copies an online tunnel's URL. Only tunnel URLs: the page cannot write arbitrary text.
#[tauri::command]
pub fn copy_url<R: Runtime>(app: AppHandle<R>, state: S<'_>, id: String) -> Result<String, Error> {
    let url = state.public_url(&id)?;
    app.clipboard()
        .write_text(url.clone())
        .map_err(|e| Error::System(format!("could not copy: {e}")))?;
    Ok(url)
}

/// Opens an online tunnel's URL in the default browser. Only tunnel URLs, for the same reason.
#[tauri::command]
pub fn open_url(state: S<'_>, id: String) -> Result<String, Error> {
    let url = state.browser_url(&id)?;
    crate::webview::open_detached(&url)
        .map_err(|e| Error::System(format!("could not open a browser: {e}")))?;
    Ok(url)
}
