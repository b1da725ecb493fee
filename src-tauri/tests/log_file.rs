//! The app's log file (tauri-plugin-log, rotated) gets the app's `tracing` events at the most
//! verbose level, and a server token saved in Settings and sent by a tunnel never appears in
//! it. The same check for the `ggrok` and `ggrok-server` binaries is `server/tests/secrets.rs`.
//! Its own test binary, because it installs the process-wide logger.

use ggrok_desktop::{
    background,
    embedded::EmbeddedServer,
    state::{AppState, ServerInput, TunnelInput},
    tunnels::Manager,
};
use ggrok_tunnel::{
    saved::{Store, FILE_NAME},
    tokens::Secrets,
};
use tauri_plugin_log::TargetKind;

const TOKEN: &str = "tok-log-secret-8d3f2a";

#[test]
fn the_log_file_has_the_apps_events_and_never_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let _app = tauri::test::mock_builder()
        .plugin(background::log_plugin(
            TargetKind::Folder {
                path: logs.clone(),
                file_name: Some(background::LOG_FILE.into()),
            },
            log::LevelFilter::Trace,
        ))
        .build(tauri::test::mock_context(tauri::test::noop_assets()))
        .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = EmbeddedServer::start(0).await.unwrap();
        let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (store, _) = Store::load(dir.path().join(FILE_NAME));
        let state = AppState::new(
            store,
            None,
            Secrets::in_memory(),
            Manager::new(),
            server.url.clone(),
        );
        let saved = state
            .save_server(ServerInput {
                id: None,
                name: "work".into(),
                url: server.url.clone(),
                token: Some(TOKEN.into()),
            })
            .unwrap();
        let t = state
            .expose(TunnelInput {
                server_id: saved.id,
                subdomain: Some("logged".into()),
                local_host: Some("127.0.0.1".into()),
                local_port: origin.local_addr().unwrap().port().into(),
                ..TunnelInput::default()
            })
            .await
            .unwrap();
        state.manager().online(&t.id).await.unwrap();
        state.manager().stop_all().await;
    });
    log::logger().flush();

    let mut text = String::new();
    for f in std::fs::read_dir(&logs).unwrap() {
        text += &std::fs::read_to_string(f.unwrap().path()).unwrap();
    }
    assert!(text.contains("embedded server listening"), "{text}");
    assert!(
        text.contains("logged"),
        "the tunnel's session is logged: {text}"
    );
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!text.contains(&TOKEN[..12]), "{text}");
}
