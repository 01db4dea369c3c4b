//! The web inbox in a real headless Chromium against the real binary:
//! runs `web/tests/inbox.test.mjs` (Node's test runner driving Debian's
//! `chromium` with puppeteer-core) with a fake Graph API to send through.
//!
//! scripts/test.sh installs what it needs (`chromium` with apt, `npm ci` in
//! `web/`); without them this test fails, naming what is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use test_support::graph::{FakeGraph, Reply};

/// A 4×4 green PNG.
const PNG: [u8; 72] = [
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 4, 0, 0, 0, 4, 8, 2, 0,
    0, 0, 38, 147, 9, 41, 0, 0, 0, 15, 73, 68, 65, 84, 120, 156, 99, 96, 88, 209, 130, 64, 196,
    113, 0, 223, 131, 18, 193, 65, 11, 98, 149, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
];

#[tokio::test(flavor = "multi_thread")]
async fn the_web_inbox_in_headless_chromium() {
    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web");
    assert!(
        web.join("node_modules/puppeteer-core").is_dir(),
        "puppeteer-core is not installed in web/: run scripts/test.sh, or \
         `cd web && PUPPETEER_SKIP_DOWNLOAD=1 npm ci`"
    );
    let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no browser at {chromium}: run scripts/test.sh, or `apt-get install chromium`, or set CHROMIUM_BIN"
    );

    let graph = FakeGraph::start().await;
    graph.add_media("inboximage1", &PNG, "image/png");
    // The test's sends, in order: a text (accepted), a text WhatsApp
    // refuses (131047), then a template (accepted, as is anything after).
    graph.script([Reply::Accept, Reply::ReEngagement131047]);

    let status = tokio::process::Command::new("node")
        .args([
            "--test",
            "--test-reporter=spec",
            "--test-concurrency=1",
            "tests/inbox.test.mjs",
        ])
        .current_dir(&web)
        .env("WHATSAPP_CLONE_BIN", env!("CARGO_BIN_EXE_whatsapp-clone"))
        .env("CHROMIUM_BIN", &chromium)
        .env("INBOX_IMAGE_MEDIA_ID", "inboximage1")
        .envs(graph.env())
        // The fake Graph API's media URLs are on 127.0.0.1, over http.
        .env("MEDIA_ALLOWED_HOSTS", "127.0.0.1")
        .env("MEDIA_ALLOW_PRIVATE_ADDRESSES", "true")
        .kill_on_drop(true)
        .status()
        .await
        .expect("node (scripts/test.sh installs Node.js)");
    assert!(
        status.success(),
        "the browser tests failed (see their output above)"
    );
    assert!(graph.invalid().is_empty(), "{:#?}", graph.invalid());
    assert_eq!(
        graph.downloads("inboximage1"),
        1,
        "the image was fetched once, then cached"
    );
}
