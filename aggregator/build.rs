//! Embeds the built dashboard (`dashboard/dist`, made by `make dashboard`)
//! in the aggregator: every file raw and gzip-compressed, with its MIME type
//! and an ETag. Without a build, a small page says how to make one.
//!
//! Writes `dashboard_assets.rs` (what is served: the build, or the page) and
//! `dashboard_fallback.rs` (always the page), so the page a dashboard-less
//! build serves is tested in every build.

use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let dist = manifest.join("../dashboard/dist");
    // A missing dist counts as changed at every build, so a later
    // `make dashboard` is picked up (at the price of re-running this script
    // until then).
    println!("cargo:rerun-if-changed={}", dist.display());

    let page = out.join("index.html");
    std::fs::write(&page, FALLBACK).expect("write fallback page");
    let fallback = vec![("/index.html".to_string(), page)];
    let built = dist.join("index.html").is_file();
    let mut files = Vec::new();
    if built {
        collect(&dist, &dist, &mut files);
    } else {
        files.clone_from(&fallback);
    }
    files.sort();

    let served = table(&files, &out, "asset");
    std::fs::write(out.join("dashboard_assets.rs"), served).expect("write asset table");
    let fallback = table(&fallback, &out, "fallback");
    std::fs::write(out.join("dashboard_fallback.rs"), fallback).expect("write fallback table");
    std::fs::write(out.join("dashboard_built.rs"), built.to_string()).expect("write flag");
}

/// The Rust expression of an `&[Asset]` holding `files` (route, path),
/// their gzip forms written to `out` as `<prefix>-<i>.gz`.
fn table(files: &[(String, PathBuf)], out: &Path, prefix: &str) -> String {
    let mut code = String::from("&[\n");
    for (i, (route, path)) in files.iter().enumerate() {
        let body = std::fs::read(path).expect("read dashboard file");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&body).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let gz_path = out.join(format!("{prefix}-{i}.gz"));
        std::fs::write(&gz_path, &gz).expect("write gzip asset");
        let mut h = DefaultHasher::new();
        body.hash(&mut h);
        writeln!(
            code,
            "    Asset {{ path: {route:?}, mime: {mime:?}, etag: \"\\\"{etag:016x}\\\"\", body: include_bytes!({body:?}), gzip: include_bytes!({gz:?}) }},",
            mime = mime(path),
            etag = h.finish(),
            body = path.canonicalize().expect("asset path"),
            gz = gz_path,
        )
        .expect("write to string");
    }
    code.push(']');
    code
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).expect("read dashboard/dist") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let rel = path.strip_prefix(root).expect("under root");
            let route = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
            files.push((route, path));
        }
    }
}

fn mime(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "map" => "application/json",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

const FALLBACK: &str = "<!doctype html><meta charset=utf-8><title>hostpulse</title>\
<body style=\"font-family:sans-serif;max-width:40em;margin:3em auto\">\
<h1>hostpulse</h1><p>This aggregator was built without its dashboard. \
Build it with <code>make dashboard</code> (needs Node.js 20 and npm), then rebuild \
the aggregator; or use the WebSocket endpoint <code>/ws</code> and the REST API \
<code>/api/v1/hosts</code> directly.</p>";
