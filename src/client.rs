//! `imgbatch submit`, `status`, `list`, `cancel`, `retry` and `download`: a small client for the
//! HTTP API, for people who would rather not write curl loops. `submit --wait` follows the
//! request's live events (SSE) when the service offers them, and polls its status otherwise.
//!
//! Exit codes of `submit --wait` (see [`Outcome`]): 0 when every image completed, 2 when the
//! request ended `completed_with_errors`, 3 when it `failed`, 4 when it was `cancelled`, 130
//! when interrupted (Ctrl-C) while waiting; 1 for any other error (the service unreachable,
//! the CSV refused, ...).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::config::{
    DownloadArgs, ListArgs, RequestArgs, RetryArgs, ServerArgs, StatusArgs, SubmitArgs,
};

/// How a client command ended, when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done; with `--wait`, every image completed.
    Success,
    /// The request settled as `completed_with_errors`.
    CompletedWithErrors,
    /// The request settled as `failed`: no image completed.
    Failed,
    /// The request was cancelled.
    Cancelled,
    /// Ctrl-C while waiting; the request goes on on the server.
    Interrupted,
}

impl Outcome {
    /// The process exit code. 1 is kept for errors (see [`exit_code`]).
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::CompletedWithErrors => 2,
            Outcome::Failed => 3,
            Outcome::Cancelled => 4,
            Outcome::Interrupted => 130,
        }
    }
}

/// The process exit code of a client command; an error is printed to stderr and exits 1.
pub fn exit_code(result: anyhow::Result<Outcome>) -> ExitCode {
    match result {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(e) => {
            eprintln!("imgbatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    fn new(args: &ServerArgs) -> anyhow::Result<Self> {
        Self::with_client(
            args,
            reqwest::Client::builder().timeout(Duration::from_secs(120)),
        )
    }

    /// For downloads, which may take longer than any total timeout: only a stall ends them.
    fn for_download(args: &ServerArgs) -> anyhow::Result<Self> {
        Self::with_client(
            args,
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(30))
                .read_timeout(Duration::from_secs(120)),
        )
    }

    fn with_client(args: &ServerArgs, http: reqwest::ClientBuilder) -> anyhow::Result<Self> {
        Ok(Self {
            http: http.build()?,
            base: args.server.trim_end_matches('/').to_string(),
            key: args.api_key.clone(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    /// Sends, and turns an error answer into an error carrying the service's message.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) if e.is_connect() => {
                return Err(anyhow!(e).context(unreachable_message(&self.base)));
            }
            Err(e) => return Err(anyhow!(e).context(format!("cannot reach {}", self.base))),
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let mut msg = format!(
            "{status}: {}",
            body["message"].as_str().unwrap_or("(no message)")
        );
        if status == reqwest::StatusCode::UNAUTHORIZED {
            msg.push_str(&format!("\n  {}", unauthorized_hint(self.key.is_some())));
        }
        if let Some(errors) = body["errors"].as_array() {
            for e in errors {
                if let Some(field) = e["field"].as_str() {
                    let message = e["message"].as_str().unwrap_or("");
                    msg.push_str(&format!("\n  {field}: {message}"));
                    continue;
                }
                let column = e["column"]
                    .as_str()
                    .map(|c| format!(", {c}"))
                    .unwrap_or_default();
                msg.push_str(&format!(
                    "\n  line {}{column}: {}",
                    e["line"],
                    e["message"].as_str().unwrap_or("")
                ));
            }
        }
        bail!(msg)
    }

    async fn status(&self, id: &str) -> anyhow::Result<Value> {
        Ok(self
            .send(self.request(reqwest::Method::GET, &format!("/api/status/{id}")))
            .await?
            .json()
            .await?)
    }
}

/// What a refused connection means to the user.
fn unreachable_message(base: &str) -> String {
    format!(
        "the server is not reachable at {base} (is `imgbatch serve` running there? \
         choose the address with --server or {SERVER_ENV})"
    )
}

/// The hint added to a 401 answer.
fn unauthorized_hint(key_given: bool) -> String {
    if key_given {
        format!("the service refused this API key: check --api-key (or {API_KEY_ENV})")
    } else {
        format!("the service requires an API key: pass --api-key <key> (or set {API_KEY_ENV})")
    }
}

/// The environment variables the client flags read (see [`crate::config::ServerArgs`]).
const API_KEY_ENV: &str = "IMGBATCH_API_KEY";
const SERVER_ENV: &str = "IMGBATCH_SERVER";

/// What Ctrl-C while waiting prints: the request goes on, and how to follow it later.
pub fn interrupted_message(base: &str, id: &str) -> String {
    format!(
        "interrupted: request {id} goes on on the server.\n\
         Follow it later with: imgbatch status {id} --server {base}\n\
         or: GET {base}/api/status/{id}"
    )
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<Outcome> {
    let api = Api::new(&args.server)?;
    let csv =
        std::fs::read(&args.csv).with_context(|| format!("cannot read {}", args.csv.display()))?;
    let name = args
        .csv
        .file_name()
        .map_or("products.csv".into(), |n| n.to_string_lossy().into_owned());
    let mut form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(csv)
            .file_name(name)
            .mime_str("text/csv")?,
    );
    // The service checks the options (one set of rules, and its 400 names the bad field).
    for (field, value) in [
        ("webhookUrl", &args.webhook_url),
        ("quality", &args.quality),
        ("maxWidth", &args.max_width),
        ("maxHeight", &args.max_height),
        ("format", &args.format),
    ] {
        if let Some(v) = value {
            form = form.text(field, v.clone());
        }
    }
    let mut req = api
        .request(reqwest::Method::POST, "/api/upload")
        .multipart(form);
    if let Some(k) = &args.idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    let body: Value = api.send(req).await?.json().await?;
    let id = body["requestId"]
        .as_str()
        .context("the service answered without a requestId")?
        .to_string();
    // Listening for Ctrl-C before the ID is printed: whoever reads the ID (a script, a test)
    // may interrupt at once, and must get the message rather than the default SIGINT death.
    let interrupt = args.wait.then(Interrupt::listen).transpose()?;
    println!("{id}");
    let Some(mut interrupt) = interrupt else {
        return Ok(Outcome::Success);
    };
    let status = tokio::select! {
        status = follow(&api, &id) => status?,
        () = interrupt.recv() => {
            eprintln!("\n{}", interrupted_message(&api.base, &id));
            return Ok(Outcome::Interrupted);
        }
    };
    print_summary(&status);
    if let Some(path) = &args.output {
        let csv = api
            .send(api.request(
                reqwest::Method::GET,
                &format!("/api/requests/{id}/output.csv"),
            ))
            .await?
            .bytes()
            .await?;
        std::fs::write(path, &csv).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("output.csv saved to {}", path.display());
    }
    Ok(match status["status"].as_str() {
        Some("completed") => Outcome::Success,
        Some("completed_with_errors") => Outcome::CompletedWithErrors,
        Some("cancelled") => Outcome::Cancelled,
        _ => Outcome::Failed,
    })
}

/// Ctrl-C (SIGINT), listened for from the moment it is created.
struct Interrupt {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("cannot listen for Ctrl-C")?,
        })
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            self.signal.recv().await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Follows the request until it settles, drawing a progress bar on stderr: by its live events
/// when the service offers them, else (or if the stream breaks off) by polling its status.
async fn follow(api: &Api, id: &str) -> anyhow::Result<Value> {
    let bar = ProgressBar::new(0);
    // Cleared when the wait ends early (Ctrl-C drops this future), so the message that follows
    // is not drawn over.
    let _clear = ClearOnDrop(bar.clone());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} images {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if follow_events(api, id, &bar).await.unwrap_or(false) {
        let s = api.status(id).await?;
        show_progress(&bar, &s);
        bar.finish();
        return Ok(s);
    }
    loop {
        let s = api.status(id).await?;
        show_progress(&bar, &s);
        if is_final(&s) {
            bar.finish();
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is_final(s: &Value) -> bool {
    matches!(
        s["status"].as_str(),
        Some("completed" | "completed_with_errors" | "failed" | "cancelled")
    )
}

/// The progress of a status body or a summary, on the bar.
fn show_progress(bar: &ProgressBar, s: &Value) {
    let p = &s["progress"];
    let (total, done, failed) = (
        p["totalImages"].as_u64().unwrap_or(0),
        p["completedImages"].as_u64().unwrap_or(0),
        p["failedImages"].as_u64().unwrap_or(0),
    );
    bar.set_length(total);
    bar.set_position(done + failed);
    bar.set_message(if failed > 0 {
        format!("({failed} failed)")
    } else {
        String::new()
    });
}

/// Reads `GET /api/requests/{id}/events` until its final `status` event: true then. False
/// when the service has no such stream (an older server) or it ended early.
async fn follow_events(api: &Api, id: &str, bar: &ProgressBar) -> anyhow::Result<bool> {
    use futures::StreamExt;
    // No overall timeout (a request may take hours); the service sends a comment every 15 s.
    let http = reqwest::Client::builder()
        .read_timeout(Duration::from_secs(60))
        .build()?;
    let mut req = http.get(format!("{}/api/requests/{id}/events", api.base));
    if let Some(k) = &api.key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await?;
    let is_sse = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !resp.status().is_success() || !is_sse {
        return Ok(false);
    }
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let Some((event, data)) = parse_event(&block) else {
                continue;
            };
            if let Ok(summary) = serde_json::from_str::<Value>(&data) {
                show_progress(bar, &summary);
            }
            if event == "status" {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// An SSE block's event name (`message` by default) and data; `None` for a comment alone.
fn parse_event(block: &str) -> Option<(String, String)> {
    let mut event = "message".to_string();
    let mut data: Option<String> = None;
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            let v = v.strip_prefix(' ').unwrap_or(v);
            data = Some(match data {
                Some(d) => format!("{d}\n{v}"),
                None => v.to_string(),
            });
        }
    }
    data.map(|d| (event, d))
}

struct ClearOnDrop(ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        if !self.0.is_finished() {
            self.0.abandon();
        }
    }
}

fn print_summary(s: &Value) {
    let p = &s["progress"];
    let cancelled = p["cancelledImages"].as_u64().unwrap_or(0);
    println!(
        "{}: {} of {} images done, {} failed{}",
        s["status"].as_str().unwrap_or("?"),
        p["completedImages"],
        p["totalImages"],
        p["failedImages"],
        if cancelled > 0 {
            format!(", {cancelled} cancelled")
        } else {
            String::new()
        }
    );
    println!("{}", savings_line(&s["savings"]));
    for product in s["products"].as_array().into_iter().flatten() {
        for img in product["images"].as_array().into_iter().flatten() {
            if img["status"] == "failed" {
                println!(
                    "  serial {}: {}: {}",
                    product["serialNumber"],
                    img["inputImageUrl"].as_str().unwrap_or(""),
                    img["error"].as_str().unwrap_or("")
                );
            }
        }
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<Outcome> {
    let api = Api::new(&args.server)?;
    let s = api.status(&args.request_id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_summary(&s);
    }
    Ok(Outcome::Success)
}

/// `imgbatch download <id> [-o file.zip | -o folder]`: outputs.zip saved as it arrives (to a
/// `.part` file renamed once complete, so a cut download never looks finished), and for a
/// folder unpacked there.
pub async fn download(args: DownloadArgs) -> anyhow::Result<Outcome> {
    let api = Api::for_download(&args.server)?;
    let id = &args.request_id;
    let target = args
        .output
        .clone()
        .unwrap_or_else(|| format!("{id}-outputs.zip").into());
    let as_zip = target
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
    let folder = (!as_zip).then(|| target.clone());
    let archive = match &folder {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.join(format!(".{id}-outputs.zip"))
        }
        None => target.clone(),
    };
    let part = archive.with_extension("zip.part");
    let mut resp = api
        .send(api.request(
            reqwest::Method::GET,
            &format!("/api/requests/{id}/outputs.zip"),
        ))
        .await?;
    let mut file = tokio::fs::File::create(&part)
        .await
        .with_context(|| format!("cannot write {}", part.display()))?;
    let mut bytes = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .context("the download was cut off; run it again")?
    {
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
        bytes += chunk.len() as u64;
    }
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    drop(file);
    std::fs::rename(&part, &archive)?;
    match folder {
        None => println!("{} ({bytes} bytes)", archive.display()),
        Some(dir) => {
            let unpacked = unpack(&archive, &dir);
            std::fs::remove_file(&archive)?;
            println!("{} ({} files)", dir.display(), unpacked?);
        }
    }
    Ok(Outcome::Success)
}

/// `saved 315059 of 412380 bytes (76.4%): 97321 bytes out`
fn savings_line(v: &Value) -> String {
    format!(
        "saved {} of {} bytes ({}%): {} bytes out",
        v["savedBytes"].as_i64().unwrap_or(0),
        v["bytesIn"].as_i64().unwrap_or(0),
        v["savedPercent"].as_f64().unwrap_or(0.0),
        v["bytesOut"].as_i64().unwrap_or(0)
    )
}

/// One line of `imgbatch list` and the answer of cancel and retry.
fn summary_line(r: &Value) -> String {
    let p = &r["progress"];
    format!(
        "{}  {:<21}  {}/{} done, {} failed  {}%  {}",
        r["requestId"].as_str().unwrap_or("?"),
        r["status"].as_str().unwrap_or("?"),
        p["completedImages"],
        p["totalImages"],
        p["failedImages"],
        r["savings"]["savedPercent"].as_f64().unwrap_or(0.0),
        r["createdAt"].as_str().unwrap_or("")
    )
}

pub async fn list(args: ListArgs) -> anyhow::Result<Outcome> {
    let api = Api::new(&args.server)?;
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(s) = &args.status {
        query.push(("status", s.clone()));
    }
    if let Some(c) = &args.cursor {
        query.push(("cursor", c.clone()));
    }
    let page: Value = api
        .send(
            api.request(reqwest::Method::GET, "/api/requests")
                .query(&query),
        )
        .await?
        .json()
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(Outcome::Success);
    }
    for r in page["requests"].as_array().into_iter().flatten() {
        println!("{}", summary_line(r));
    }
    if let Some(c) = page["nextCursor"].as_str() {
        eprintln!("more: imgbatch list --cursor {c}");
    }
    Ok(Outcome::Success)
}

/// Unpacks a bundle into `dir`; the number of files. Entry names are single file names (the
/// service makes them so); anything else is refused rather than written outside `dir`.
fn unpack(archive: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<usize> {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(archive)?)
        .context("the service sent an archive that does not open")?;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let name = entry
            .enclosed_name()
            .filter(|p| p.components().count() == 1)
            .with_context(|| format!("refusing the entry name {:?}", entry.name()))?;
        let mut out = std::fs::File::create(dir.join(name))?;
        std::io::copy(&mut entry, &mut out)?;
    }
    Ok(zip.len())
}

pub async fn cancel(args: RequestArgs) -> anyhow::Result<Outcome> {
    let api = Api::new(&args.server)?;
    let path = format!("/api/requests/{}/cancel", args.request_id);
    let r: Value = api
        .send(api.request(reqwest::Method::POST, &path))
        .await?
        .json()
        .await?;
    println!("{}", summary_line(&r));
    Ok(Outcome::Success)
}

pub async fn retry(args: RetryArgs) -> anyhow::Result<Outcome> {
    let api = Api::new(&args.server)?;
    let path = format!("/api/requests/{}/retry", args.request_id);
    let mut req = api.request(reqwest::Method::POST, &path);
    if !args.error_codes.is_empty() {
        req = req.json(&serde_json::json!({ "errorCodes": args.error_codes }));
    }
    let r: Value = api.send(req).await?.json().await?;
    println!(
        "{} images queued again\n{}",
        r["requeuedImages"],
        summary_line(&r)
    );
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_parse_with_their_event_names() {
        assert_eq!(
            parse_event("event: progress\ndata: {\"a\":1}\n\n"),
            Some(("progress".into(), "{\"a\":1}".into()))
        );
        assert_eq!(
            parse_event("data: x\ndata: y\n"),
            Some(("message".into(), "x\ny".into()))
        );
        assert_eq!(parse_event(":\n\n"), None);
    }
}
