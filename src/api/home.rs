//! `GET /`: a small page saying what this service is and where its API is described, so a
//! browser pointed at the address finds its way (until the web page replaces it). Plain HTML:
//! the page's content policy allows no scripts and no styles.

use axum::response::Html;

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>imgbatch</title>
</head>
<body>
<h1>imgbatch</h1>
<p>Upload a CSV of products and image URLs; imgbatch downloads and compresses every image in
the background, reports progress and calls a webhook when the request is done.</p>
<ul>
<li><a href="/docs">API documentation</a> (Swagger UI, try the calls from the browser)</li>
<li><a href="/api/openapi.json">OpenAPI document</a></li>
<li><code>POST /api/upload</code>: multipart part <code>file</code> (the CSV), optional
<code>webhookUrl</code>; answers <code>{"requestId": "…"}</code></li>
<li><code>GET /api/status/{requestId}</code>: progress, products and output URLs</li>
<li><code>GET /api/requests/{requestId}/output.csv</code>: the CSV with its output URLs</li>
<li><code>GET /api/requests</code>: your requests, newest first, with their progress and savings</li>
<li><code>POST /api/requests/{requestId}/cancel</code>, <code>POST /api/requests/{requestId}/retry</code>:
stop a request; run its failed images again</li>
<li><code>GET /api/requests/{requestId}/events</code>: live progress (Server-Sent Events)</li>
<li><a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a>, <a href="/metrics">/metrics</a></li>
</ul>
<p>From a shell: <code>curl -F file=@products.csv http://this-host/api/upload</code>, or
<code>imgbatch submit products.csv --wait</code>.</p>
</body>
</html>
"#;

pub async fn home() -> Html<&'static str> {
    Html(PAGE)
}
