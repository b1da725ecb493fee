// The app's commands, so `tauri-build` generates an `allow-<command>` permission for each and
// `capabilities/main.json` can grant exactly these.
const COMMANDS: &[&str] = &[
    "app_info",
    "list_tunnels",
    "expose",
    "update_tunnel",
    "delete_tunnel",
    "start_tunnel",
    "stop_tunnel",
    "list_traffic",
    "list_connections",
    "get_exchange",
    "replay",
    "copy_curl",
    "export_har",
    "list_servers",
    "save_server",
    "test_server",
    "list_listening",
    "delete_server",
    "copy_url",
    "open_url",
    "background_settings",
    "save_background_settings",
    "open_log_folder",
];

fn main() {
    tauri_build::try_build(
        tauri_build::Attributes::new()
            .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS)),
    )
    .expect("tauri build script");
}
