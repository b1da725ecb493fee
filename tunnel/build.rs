//! Embeds the web inspector (`ui/dist-inspector`, built by `npm run build:ui`) into the crate, so
//! an installed `ggrok` needs no files beside it. Without that directory (a build from the crate
//! alone, or before the UI was built) nothing is embedded and the inspector's page says how to
//! build it; its API works either way.

use std::{env, fmt::Write as _, fs, path::Path};

fn main() {
    let manifest = env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let dist = Path::new(&manifest).join("../ui/dist-inspector");
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        collect(&dist, &dist, &mut files);
        println!("cargo:rerun-if-changed={}", dist.display());
    } else {
        println!(
            "cargo:warning=ui/dist-inspector is missing: the web inspector is not embedded \
             (run `npm run build:ui` first; the inspector's API works without it)"
        );
        // Watched so that building the UI later embeds it. `ui/` is absent in a packaged crate.
        let ui = Path::new(&manifest).join("../ui");
        if ui.is_dir() {
            println!("cargo:rerun-if-changed={}", ui.display());
        }
    }
    files.sort();
    let mut out = String::from(
        "/// Embedded files: path below `/`, contents.\npub static FILES: &[(&str, &[u8])] = &[\n",
    );
    for (route, path) in &files {
        let _ = writeln!(out, "    ({route:?}, include_bytes!({path:?})),");
    }
    out.push_str("];\n");
    let dest = Path::new(&env::var("OUT_DIR").expect("set by cargo")).join("inspector_assets.rs");
    fs::write(dest, out).expect("write the asset list");
    println!("cargo:rerun-if-changed=build.rs");
}

/// Every file under `dir` as (`/route`, absolute path).
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, out);
        } else if let (Ok(rel), Ok(abs)) = (path.strip_prefix(root), path.canonicalize()) {
            let route = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
            out.push((route, abs.to_string_lossy().into_owned()));
        }
    }
}
