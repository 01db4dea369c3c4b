//! `whatsapp-clone import`: posts webhook files to a running backend (the
//! README's `processWebhookFiles`), messages before statuses, so a status
//! finds its message (it would be applied later anyway, but the run reads
//! better in order).
//!
//! With the app secret (`--app-secret` or `WHATSAPP_APP_SECRET`) every post
//! carries `X-Hub-Signature-256`, as Meta's do, so that a gateway that
//! checks signatures takes them.

use std::fmt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::Sha256;

#[derive(Debug, Default)]
pub struct ImportReport {
    pub posted: usize,
    pub messages: usize,
    pub statuses: usize,
    /// File and why it failed.
    pub failed: Vec<(PathBuf, String)>,
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "imported {} file(s): {} message(s), {} status(es); {} failed",
            self.posted,
            self.messages,
            self.statuses,
            self.failed.len()
        )?;
        for (file, reason) in &self.failed {
            write!(f, "\n  {}: {reason}", file.display())?;
        }
        Ok(())
    }
}

/// Every `*.json` file under the given paths (folders are not recursed),
/// in name order.
fn collect(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "json")
                        && p.file_name().is_some_and(|n| n != "EXPECTED.json")
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// 0 for files with messages (or that can't be read here: the server will
/// say why), 1 for files with only statuses.
fn order(body: &[u8]) -> u8 {
    match wa_core::webhook::parse(body) {
        Ok(parsed) if parsed.messages.is_empty() && !parsed.statuses.is_empty() => 1,
        _ => 0,
    }
}

/// `X-Hub-Signature-256` of `body` under the app secret: `sha256=` and the
/// hex HMAC-SHA256 of the bytes exactly as posted, as Meta signs them.
pub fn signature(app_secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(app_secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts every file, unsigned; see [`run_signed`].
pub async fn run(paths: &[PathBuf], url: &str, progress: bool) -> anyhow::Result<ImportReport> {
    run_signed(paths, url, None, progress).await
}

/// Posts every file, each signed with `app_secret` when there is one (an
/// empty secret counts as none, as for the gateway); a file fails when it
/// can't be read or the server doesn't answer 200. `progress` shows a bar
/// on the terminal.
pub async fn run_signed(
    paths: &[PathBuf],
    url: &str,
    app_secret: Option<&str>,
    progress: bool,
) -> anyhow::Result<ImportReport> {
    let app_secret = app_secret.filter(|s| !s.is_empty());
    let mut files: Vec<(PathBuf, Result<Vec<u8>, String>)> = collect(paths)?
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).map_err(|e| e.to_string())))
        .collect();
    files.sort_by_key(|(path, body)| (body.as_ref().map_or(0, |b| order(b)), path.clone()));

    let bar = if progress {
        ProgressBar::new(files.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {wide_msg}") {
        bar.set_style(style);
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let mut report = ImportReport::default();
    for (path, body) in files {
        bar.set_message(file_name(&path));
        match body {
            Err(e) => report.failed.push((path, format!("cannot read: {e}"))),
            Ok(body) => match post(&client, url, app_secret, body).await {
                Ok(answer) => {
                    report.posted += 1;
                    report.messages += answer["messages"].as_u64().unwrap_or(0) as usize;
                    report.statuses += answer["statuses"].as_u64().unwrap_or(0) as usize;
                }
                Err(reason) => report.failed.push((path, reason)),
            },
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(report)
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    app_secret: Option<&str>,
    body: Vec<u8>,
) -> Result<serde_json::Value, String> {
    let mut request = client.post(url).header("content-type", "application/json");
    if let Some(secret) = app_secret {
        request = request.header("x-hub-signature-256", signature(secret, &body));
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED && app_secret.is_none() {
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        return Err(format!(
            "{status}: {} (the gateway checks signatures: give the importer its app \
             secret with --app-secret or WHATSAPP_APP_SECRET)",
            answer["error"].as_str().unwrap_or("no reason given")
        ));
    }
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_success() {
        Ok(answer)
    } else {
        Err(format!(
            "{status}: {}",
            answer["error"].as_str().unwrap_or("no reason given")
        ))
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::signature;

    #[test]
    fn signs_like_meta() {
        // Meta's test vector (the webhook-gateway checks it too): compact,
        // ASCII-escaped JSON, no trailing newline.
        let body = include_bytes!(
            "../../webhook-gateway/tests/fixtures/signature_fixture_text_non_ascii.json"
        );
        assert_eq!(
            signature("test-app-secret", body),
            "sha256=f837ee19f226214302584c609bf140394d45ff22d14b4b52545d94b37bb72116"
        );
    }
}
