//! `imgbatch submit` and `imgbatch status`: a small client for the HTTP API, for people who
//! would rather not write curl loops.

use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::config::{ServerArgs, StatusArgs, SubmitArgs};

struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    fn new(args: &ServerArgs) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
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
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let mut msg = format!(
            "{status}: {}",
            body["message"].as_str().unwrap_or("(no message)")
        );
        if let Some(errors) = body["errors"].as_array() {
            for e in errors {
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

pub async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
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
    if let Some(w) = &args.webhook_url {
        form = form.text("webhookUrl", w.clone());
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
    println!("{id}");
    if !args.wait {
        return Ok(());
    }
    let status = follow(&api, &id).await?;
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
    if status["status"] == "failed" {
        bail!("every image failed");
    }
    Ok(())
}

/// Polls until the request settles, drawing a progress bar on stderr.
async fn follow(api: &Api, id: &str) -> anyhow::Result<Value> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} images {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let s = api.status(id).await?;
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
        if matches!(
            s["status"].as_str(),
            Some("completed" | "completed_with_errors" | "failed")
        ) {
            bar.finish();
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_summary(s: &Value) {
    let p = &s["progress"];
    println!(
        "{}: {} of {} images done, {} failed",
        s["status"].as_str().unwrap_or("?"),
        p["completedImages"],
        p["totalImages"],
        p["failedImages"]
    );
    for product in s["products"].as_array().into_iter().flatten() {
        for img in product["images"].as_array().into_iter().flatten() {
            if img["status"] == "failed" {
                println!(
                    "  #{} {}: {}",
                    product["serialNumber"],
                    img["inputImageUrl"].as_str().unwrap_or(""),
                    img["error"].as_str().unwrap_or("")
                );
            }
        }
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server)?;
    let s = api.status(&args.request_id).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_summary(&s);
    }
    Ok(())
}
