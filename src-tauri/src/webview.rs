//! Settings of the window's web view that the Tauri config cannot express.

/// Has WebKitGTK draw the page without accelerated compositing, unless the environment says
/// otherwise. Call it first in `main`, before any thread exists (it sets an environment variable,
/// which WebKit's web process inherits).
///
/// The UI is a few hundred DOM nodes with no animation or video, and without a GPU (under Xvfb,
/// in a VM, over remote desktop) WebKitGTK composites in software anyway. Measured on the
/// installed release package with one tunnel online (`bench/desktop.sh`, docs/benchmarks.md):
/// the web process went from ~187 MiB to ~85 MiB PSS and its CPU to first paint from ~1.8 s to
/// ~0.3 s. Setting the same through `WebKitSettings`' hardware acceleration policy once the
/// view exists left the page blank. `WEBKIT_DISABLE_COMPOSITING_MODE=0` keeps WebKit's default.
pub fn configure_before_threads() {
    #[cfg(target_os = "linux")]
    if std::env::var_os(DISABLE_COMPOSITING).is_none() {
        std::env::set_var(DISABLE_COMPOSITING, "1");
    }
}

#[cfg(target_os = "linux")]
const DISABLE_COMPOSITING: &str = "WEBKIT_DISABLE_COMPOSITING_MODE";
