//! The web inspector's files, embedded at compile time by `build.rs` from `ui/dist-inspector`.

include!(concat!(env!("OUT_DIR"), "/inspector_assets.rs"));

/// The file served at `path` (`/` is `/index.html`) and its content type.
pub fn get(path: &str) -> Option<(&'static [u8], &'static str)> {
    let path = if path == "/" { "/index.html" } else { path };
    let (_, data) = FILES.iter().find(|(p, _)| *p == path)?;
    Some((data, content_type(path)))
}

/// Whether the web page was built into this binary.
pub fn embedded() -> bool {
    !FILES.is_empty()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}
