//! How the window's web view draws and runs scripts, set through the environment before GTK and
//! WebKit start (the Tauri config cannot express it), and the environment programs the app
//! starts get back.

use std::{ffi::OsStr, io, process::Command, sync::OnceLock};

/// What the app sets when the environment does not: WebKitGTK draws the page in software,
/// without accelerated compositing, and nothing in the app process loads Mesa.
///
/// The UI is a few hundred DOM nodes with no animation or video, and without a GPU (under Xvfb,
/// in a VM, over remote desktop) WebKitGTK composites in software anyway. Measured on the
/// installed release package with one tunnel online (`bench/desktop.sh`, docs/benchmarks.md):
/// - `WEBKIT_DISABLE_COMPOSITING_MODE=1`: the web process went from ~187 to ~103 MiB PSS and
///   its CPU to first paint from ~1.8 s to ~0.3 s. (Setting WebKitSettings' hardware
///   acceleration policy once the view exists instead left the page blank.)
/// - The other three keep the app process from initialising GL, which loads Mesa's driver and
///   with it libLLVM (~20 MiB PSS, mostly relocated data): GTK 3 probes GLX visuals when it
///   opens the display (`GDK_GL=disable`), and WebKit's UI side opens an EGL display to pick
///   the DMA-BUF renderer and the GPU node for the web process
///   (`WEBKIT_DISABLE_DMABUF_RENDERER=1`; `WEBKIT_WEB_RENDER_DEVICE_FILE` naming no DRM node).
///   None of them is used once compositing is off: app process ~93 -> ~64 MiB PSS, ~120 ms
///   less CPU before the WebKit processes start. The web process needs EGL regardless (it
///   aborts without a display), so it keeps Mesa.
///
/// `WEBKIT_DISABLE_COMPOSITING_MODE=0` keeps WebKit's defaults for all four (the E2E does:
/// WebKitWebDriver stops answering with compositing off).
#[cfg(target_os = "linux")]
const SOFTWARE_DRAWING: [(&str, &str); 4] = [
    (DISABLE_COMPOSITING, "1"),
    ("GDK_GL", "disable"),
    ("WEBKIT_DISABLE_DMABUF_RENDERER", "1"),
    ("WEBKIT_WEB_RENDER_DEVICE_FILE", "/dev/null"),
];

#[cfg(target_os = "linux")]
const DISABLE_COMPOSITING: &str = "WEBKIT_DISABLE_COMPOSITING_MODE";

/// JavaScriptCore runs the page's scripts in its interpreter, without the JIT compilers.
///
/// The UI's scripts are small and event-driven (rendering the list is WebKit's C++ work); the
/// JIT's code, compiler threads and their heaps cost ~7 MiB PSS over the three processes
/// (installed package, one tunnel online: ~202 -> ~195 MiB), with the same CPU to first paint.
/// `JSC_useJIT=1` turns the JIT back on.
#[cfg(target_os = "linux")]
const INTERPRETER: (&str, &str) = ("JSC_useJIT", "0");

/// The variables this process set (not the user's), for [`open_detached`] to take back out.
static SET_HERE: OnceLock<Vec<&'static str>> = OnceLock::new();

/// Applies [`SOFTWARE_DRAWING`] and [`INTERPRETER`] where the environment leaves them open. Call it first in `main`,
/// before any thread exists (it sets environment variables, which WebKit's processes inherit).
pub fn configure_before_threads() {
    #[cfg(target_os = "linux")]
    {
        let to_set = defaults_to_set(|name| std::env::var_os(name).map(|v| v == "0"));
        for (name, value) in &to_set {
            std::env::set_var(name, value);
        }
        let _ = SET_HERE.set(to_set.iter().map(|(name, _)| *name).collect());
    }
}

/// Which of [`SOFTWARE_DRAWING`] and [`INTERPRETER`] to set, given `is_zero(name)`: `None` when
/// the variable is unset, else whether it is "0". Each one the environment does not set, and
/// none of the drawing ones when compositing was asked for.
#[cfg(target_os = "linux")]
fn defaults_to_set(is_zero: impl Fn(&str) -> Option<bool>) -> Vec<(&'static str, &'static str)> {
    let drawing = if is_zero(DISABLE_COMPOSITING) == Some(true) {
        &[][..]
    } else {
        &SOFTWARE_DRAWING[..]
    };
    drawing
        .iter()
        .chain([&INTERPRETER])
        .filter(|(name, _)| is_zero(name).is_none())
        .copied()
        .collect()
}

/// Opens `target` (a URL or a folder) with the desktop's default program, in the environment
/// the app was started with: a browser or file manager must not inherit the drawing settings
/// above (a WebKitGTK browser would lose its GPU).
pub fn open_detached(target: impl AsRef<OsStr>) -> io::Result<()> {
    let set_here = SET_HERE.get().map(Vec::as_slice).unwrap_or_default();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no program to open it with");
    for mut cmd in open::commands(target) {
        without(&mut cmd, set_here);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        match cmd.spawn() {
            Ok(mut child) => {
                // xdg-open and its kind hand over to the program and exit: reap them.
                std::thread::spawn(move || child.wait());
                return Ok(());
            }
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// `cmd` without the variables `names`.
fn without(cmd: &mut Command, names: &[&str]) {
    for name in names {
        cmd.env_remove(name);
    }
}

#[cfg(test)]
mod open_tests {
    use super::*;

    #[test]
    fn programs_started_do_not_inherit_what_the_app_set() {
        let mut cmd = Command::new("xdg-open");
        without(&mut cmd, &["GDK_GL", "WEBKIT_WEB_RENDER_DEVICE_FILE"]);
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k)
            .collect();
        assert_eq!(removed, ["GDK_GL", "WEBKIT_WEB_RENDER_DEVICE_FILE"]);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<bool> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v == "0")
        }
    }

    #[test]
    fn sets_all_in_an_empty_environment() {
        let mut all = SOFTWARE_DRAWING.to_vec();
        all.push(INTERPRETER);
        assert_eq!(defaults_to_set(env(&[])), all);
    }

    #[test]
    fn compositing_asked_for_keeps_webkit_drawing_defaults() {
        assert_eq!(
            defaults_to_set(env(&[(DISABLE_COMPOSITING, "0")])),
            [INTERPRETER]
        );
        assert!(
            defaults_to_set(env(&[(DISABLE_COMPOSITING, "0"), ("JSC_useJIT", "1")])).is_empty()
        );
    }

    #[test]
    fn never_overrides_what_the_user_set() {
        let got = defaults_to_set(env(&[(DISABLE_COMPOSITING, "1"), ("GDK_GL", "always")]));
        assert_eq!(
            got,
            vec![
                ("WEBKIT_DISABLE_DMABUF_RENDERER", "1"),
                ("WEBKIT_WEB_RENDER_DEVICE_FILE", "/dev/null"),
                INTERPRETER,
            ]
        );
    }
}
