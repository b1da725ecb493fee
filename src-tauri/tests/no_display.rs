//! Started where there is no display (a server, an SSH session, a display that went away), the
//! app says so and exits with status 1, instead of Tauri's event loop panicking with 101.

use std::process::Command;

#[test]
fn without_a_display_the_app_says_why_and_exits_1() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ggrok-desktop"))
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        // Nothing of a real session is touched, should it get further than expected.
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path())
        .env("XDG_DATA_HOME", home.path())
        .env("GGROK_NO_KEYRING", "1")
        .env("GGROK_SERVER_PORT", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no display to open the window on"),
        "{stderr}"
    );
    assert!(stderr.contains("DISPLAY unset"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
