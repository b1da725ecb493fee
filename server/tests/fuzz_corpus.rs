//! Every checked-in fuzz seed (and every fixed crash, kept as a seed) through the same entry
//! points as the fuzz targets in `fuzz/`, so the corpus keeps guarding the decoders when fuzzing
//! is skipped. Each entry point panics on a broken invariant, not only on a crash.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("seed"))
        })
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 5, "{}: the corpus is missing", dir.display());
    seeds
}

fn run(target: &str, f: fn(&[u8])) {
    for (name, data) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| f(&data));
        assert!(outcome.is_ok(), "{target}: seed {name} broke an invariant");
    }
}

#[test]
fn frames_corpus() {
    run("frames", ggrok_tunnel::fuzzing::frames);
}

#[test]
fn handshake_corpus() {
    run("handshake", ggrok_server::fuzzing::handshake);
}

#[test]
fn config_corpus() {
    run("config", ggrok_server::fuzzing::config);
}

#[test]
fn hop_corpus() {
    run("hop", ggrok_server::fuzzing::hop);
}

#[test]
fn local_answer_corpus() {
    run("local_answer", ggrok_tunnel::fuzzing::local_answer);
}

#[test]
fn visitor_head_corpus() {
    run("visitor_head", ggrok_server::fuzzing::visitor_head);
}
