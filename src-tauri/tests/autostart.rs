//! "Start ggrok at login" creates and removes the login entry: on Linux an XDG autostart file,
//! `~/.config/autostart/ggrok.desktop`, that starts this executable hidden in the tray.
//! Its own test binary, because it points `HOME` at a temporary directory.

use ggrok_desktop::background::{self, AUTOSTART_NAME, HIDDEN_ARG};
use tauri_plugin_autostart::ManagerExt as _;

#[cfg(target_os = "linux")]
#[test]
fn the_login_entry_follows_the_setting() {
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HOME", home.path());
    let app = tauri::test::mock_builder()
        .plugin(background::autostart_plugin())
        .build(tauri::test::mock_context(tauri::test::noop_assets()))
        .unwrap();
    let entry = home
        .path()
        .join(".config/autostart")
        .join(format!("{AUTOSTART_NAME}.desktop"));
    assert!(!entry.exists());
    assert!(!app.autolaunch().is_enabled().unwrap());

    background::set_start_at_login(app.handle(), true).unwrap();
    let text = std::fs::read_to_string(&entry).unwrap();
    let exe = std::env::current_exe().unwrap();
    assert!(
        text.contains(&format!("{} {HIDDEN_ARG}", exe.display())),
        "{text}"
    );
    assert!(app.autolaunch().is_enabled().unwrap());

    background::set_start_at_login(app.handle(), false).unwrap();
    assert!(!entry.exists());
    assert!(!app.autolaunch().is_enabled().unwrap());
}
