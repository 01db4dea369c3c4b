//! Builds the web inbox (`web/app/`) into the binary: every file is
//! embedded with its gzip form (compressed here, once, at build time), its
//! content type and an ETag. `src/inbox.rs` serves them.
//!
//! The browser runs the files as they are in the repository (ES modules, no
//! bundler), so this needs no Node.js.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn main() {
    let manifest = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env_var("OUT_DIR"));
    let web = manifest.join("../../web/app");
    // A directory: cargo reruns this when any file under it changes, is
    // added or removed.
    println!("cargo:rerun-if-changed={}", web.display());
    let mut files = Vec::new();
    if web.is_dir() {
        collect(&web, &web, &mut files);
    } else {
        // A build without the repository's web/ (cargo-chef's dependency
        // layer builds the crate skeletons alone): no inbox, `/` is a 404.
        println!(
            "cargo:warning=no {}: the web inbox is not built in",
            web.display()
        );
    }
    files.sort();
    let mut table = String::from("&[\n");
    for (index, (name, path)) in files.iter().enumerate() {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let etag: String = Sha256::digest(&bytes)[..12]
            .iter()
            .fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            });
        let mime = mime_type(name);
        let gzip = if compressible(mime) {
            let gz = gzip(&bytes);
            (gz.len() + 64 < bytes.len()).then(|| {
                let gz_path = out.join(format!("inbox-{index}.gz"));
                std::fs::write(&gz_path, gz)
                    .unwrap_or_else(|e| panic!("{}: {e}", gz_path.display()));
                gz_path
            })
        } else {
            None
        };
        let gzip = match gzip {
            Some(p) => format!("Some(include_bytes!({:?}))", p.display().to_string()),
            None => "None".to_owned(),
        };
        let _ = writeln!(
            table,
            "    Asset {{ path: {name:?}, content_type: {mime:?}, etag: \"\\\"{etag}\\\"\", body: include_bytes!({:?}), gzip: {gzip} }},",
            path.display().to_string()
        );
    }
    table.push(']');
    let generated = out.join("inbox_assets.rs");
    std::fs::write(&generated, table).unwrap_or_else(|e| panic!("{}: {e}", generated.display()));
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name}"))
}

/// Every served file under `dir`, as (path relative to `root` with `/`, path).
/// Type declarations and notes for developers are not served.
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(root, &path, files);
        } else if !name.ends_with(".d.ts") && !name.ends_with(".md") {
            let relative = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            files.push((relative, path));
        }
    }
}

fn mime_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "webmanifest" => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

fn compressible(mime: &str) -> bool {
    mime.starts_with("text/") || mime == "image/svg+xml" || mime == "application/json"
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .unwrap_or_else(|e| panic!("gzip: {e}"))
}
