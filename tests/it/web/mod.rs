//! The web page in a real browser (headless Chromium through chromedriver): a person's whole
//! job, from a CSV to the downloaded ZIP. SQLite only: the page adds nothing to the store's
//! coverage, and each browser run costs CI time.
//!
//! `IMGBATCH_SCREENSHOTS=docs/web cargo test --test it web::` also refreshes the screenshots
//! in docs/web/ (desktop 1280 and phone 390 pixels wide).

mod browser;

use std::io::Read;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::origin::{self, Origin};
use crate::common::{csv, TestApp, TestDb};

const SETTLE: Duration = Duration::from_secs(30);

/// The page's CSV, written where the browser can pick it.
fn csv_file(db: &TestDb, name: &str, body: &str) -> String {
    let path = db.dir.path().join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

async fn upload_through_page(b: &browser::Turn, file: &str) {
    b.css("#file").await.send_keys(file).await.unwrap();
    b.css("#upload-button").await.click().await.unwrap();
}

/// The request ID of the request page the browser is on, once it is there.
async fn request_page_id(b: &browser::Turn) -> String {
    let id = b
        .until(
            "the request page",
            Duration::from_secs(10),
            "const m = location.pathname.match(/^\\/requests\\/([0-9a-f-]{36})$/); \
             return m && document.querySelector('#products .product') ? m[1] : null",
        )
        .await;
    id.as_str().unwrap().to_string()
}

async fn wait_status(b: &browser::Turn, label: &str) {
    b.until(
        &format!("the request to be {label}"),
        SETTLE,
        &format!("return document.querySelector('#req-status').textContent === {label:?}"),
    )
    .await;
}

/// Every thumbnail once loaded: its source and natural size.
async fn thumbnails(b: &browser::Turn, count: usize) -> Vec<Value> {
    let v = b
        .until(
            &format!("{count} thumbnails to load"),
            Duration::from_secs(10),
            &format!(
                "const imgs = [...document.querySelectorAll('#products img')]; \
                 if (imgs.length !== {count} || !imgs.every(i => i.complete && i.naturalWidth > 0)) return null; \
                 return imgs.map(i => ({{src: i.src, w: i.naturalWidth}}));"
            ),
        )
        .await;
    v.as_array().unwrap().clone()
}

fn zip_names(bytes: &[u8]) -> Vec<String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a ZIP");
    let mut names = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        let mut sink = Vec::new();
        f.read_to_end(&mut sink).unwrap();
        assert!(!sink.is_empty(), "{} is empty", f.name());
        names.push(f.name().to_string());
    }
    names.sort();
    names
}

/// Upload a CSV through the page, watch it complete, see the thumbnails, download the ZIP;
/// a request with a failure shows its reason and code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_watch_and_download() {
    let Some(b) = browser::take().await else {
        return;
    };
    let db = TestDb::sqlite().await;
    let origin = Origin::start().await;
    let a = origin.put("a.jpg", "image/jpeg", origin::jpeg(640, 480, 95));
    let c = origin.put("c.png", "image/png", origin::png(300, 200));
    let d = origin.put("d.jpg", "image/jpeg", origin::jpeg(400, 400, 92));
    let app = TestApp::start(db.config()).await;

    b.open(&app.url("/")).await;
    let quality = b.css("#quality").await.prop("value").await.unwrap();
    assert_eq!(quality.as_deref(), Some("50"), "the form shows the default");
    b.screenshot_to_docs("home-desktop", 1280).await;
    b.screenshot_to_docs("home-phone", 390).await;

    let rows = [
        ("1", "Blue shirt", format!("{a}, {c}")),
        ("2", "Red mug", d.clone()),
    ];
    let file = csv_file(&db, "products.csv", &csv(&rows));
    upload_through_page(&b, &file).await;
    let id = request_page_id(&b).await;
    wait_status(&b, "Completed").await;
    let thumbs = thumbnails(&b, 3).await;
    for t in &thumbs {
        let src = t["src"].as_str().unwrap();
        assert!(src.starts_with(&app.url("/images/")), "{src}");
    }
    // Inputs are links, never loaded by the page: the origin saw the service's downloads only.
    for path in ["/img/a.jpg", "/img/c.png", "/img/d.jpg"] {
        assert_eq!(origin.hits(path), 1, "{path}");
    }
    let links = b
        .js(
            "return [...document.querySelectorAll('#products .meta a')].map(a => a.href)",
            vec![],
        )
        .await;
    for url in [&a, &c, &d] {
        assert!(links.as_array().unwrap().contains(&json!(url)), "{links}");
    }
    let text = b.js("return document.body.innerText", vec![]).await;
    let text = text.as_str().unwrap();
    assert!(text.contains("3 of 3 images done"), "{text}");
    let saved = b.css("#sv-saved").await.text().await.unwrap();
    assert!(saved.ends_with("%)"), "{saved}");
    b.screenshot_to_docs("request-desktop", 1280).await;
    b.screenshot_to_docs("request-phone", 390).await;

    // The ZIP, as a person gets it: a click, and a file in the download folder.
    b.css("a[href$='/outputs.zip']")
        .await
        .click()
        .await
        .unwrap();
    let zip = b
        .download(&format!("{id}-outputs.zip"), Duration::from_secs(15))
        .await;
    assert_eq!(&zip[..4], b"PK\x03\x04");
    let names = zip_names(&zip);
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("report.csv")), "{names:?}");

    // A failed image: its reason and code, no thumbnail.
    let missing = origin.url("/status/404");
    let failed = app
        .upload_ok(csv(&[("7", "Lost lamp", missing.as_str())]))
        .await;
    b.open(&app.url(&format!("/requests/{failed}"))).await;
    wait_status(&b, "Failed").await;
    b.until(
        "the failure's code and reason",
        Duration::from_secs(5),
        "const f = document.querySelector('#products .fail'); \
         return f && f.textContent.includes('not_found') && f.textContent.includes('404')",
    )
    .await;
    let retry = b.css("#retry").await.prop("disabled").await.unwrap();
    assert_eq!(retry.as_deref(), Some("false"), "retry is offered");

    // The list: both requests, newest first, with their status.
    b.open(&app.url("/requests")).await;
    let listed = b
        .until(
            "the list",
            Duration::from_secs(10),
            "const l = [...document.querySelectorAll('#request-list li[data-id]')]; \
             return l.length === 2 ? l.map(li => [li.dataset.id, li.dataset.status]) : null",
        )
        .await;
    assert_eq!(
        listed,
        json!([[failed, "failed"], [id, "completed"]]),
        "newest first"
    );
    b.screenshot_to_docs("requests-desktop", 1280).await;
    b.screenshot_to_docs("requests-phone", 390).await;
}

/// A refused CSV: the API's line-numbered errors, next to the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_csv_shows_its_errors() {
    let Some(b) = browser::take().await else {
        return;
    };
    let db = TestDb::sqlite().await;
    let app = TestApp::start(db.config()).await;
    b.open(&app.url("/")).await;
    let body = "S. No.,Product Name,Input Image Urls\n\
                1,Shirt,https://example.com/a.jpg\n\
                2,Mug,www.example.com/b.jpg\n\
                1,Lamp,https://example.com/c.jpg\n";
    let file = csv_file(&db, "bad.csv", body);
    upload_through_page(&b, &file).await;
    let errors = b
        .until(
            "the CSV's errors",
            Duration::from_secs(10),
            "const box = document.querySelector('#file-errors'); \
             if (box.hidden) return null; \
             return {title: box.querySelector('.title').textContent, \
                     rows: [...box.querySelectorAll('li')].map(li => li.innerText.replace(/\\s+/g, ' ')), \
                     focused: document.activeElement === box}",
        )
        .await;
    assert_eq!(errors["title"], "Invalid CSV format (400)", "{errors}");
    let rows = errors["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{errors}");
    assert!(
        rows[0]
            .as_str()
            .unwrap()
            .starts_with("Line 3 Input Image Urls"),
        "{errors}"
    );
    assert!(rows[1].as_str().unwrap().starts_with("Line 4"), "{errors}");
    assert_eq!(errors["focused"], true, "the errors take the focus");
    let path = b.js("return location.pathname", vec![]).await;
    assert_eq!(path, "/", "the page stays on the form");
    let stored = db.scalar("SELECT COUNT(*) FROM requests").await;
    assert_eq!(stored, 0);
    b.screenshot_to_docs("error-desktop", 1280).await;
    b.screenshot_to_docs("error-phone", 390).await;

    // An unknown request and an unknown page are pages too.
    b.open(&app.url("/requests/0193c1f4-0000-7000-8000-000000000000"))
        .await;
    let h1 = b.css("h1").await.text().await.unwrap();
    assert_eq!(h1, "Not found");
}

/// With API keys: the page asks for one, keeps it in the tab, sends it as a header (downloads
/// too), and lists only that key's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_sees_only_its_requests() {
    let Some(b) = browser::take().await else {
        return;
    };
    let db = TestDb::sqlite().await;
    let origin = Origin::start().await;
    let img = origin.put("k.jpg", "image/jpeg", origin::jpeg(320, 240, 95));
    let mut config = db.config();
    config.api_keys = vec!["key-alpha".into(), "key-beta".into()];
    let app = TestApp::start(config).await;

    // Another key's request.
    let part = reqwest::multipart::Part::bytes(csv(&[("1", "Theirs", img.as_str())]).into_bytes())
        .file_name("theirs.csv");
    let theirs: Value = app
        .http
        .post(app.url("/api/upload"))
        .bearer_auth("key-beta")
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let theirs = theirs["requestId"].as_str().unwrap().to_string();

    b.open(&app.url("/")).await;
    let asks = b
        .js(
            "return !document.querySelector('#key-panel').hidden && \
             document.querySelector('#content').hidden",
            vec![],
        )
        .await;
    assert_eq!(asks, true, "the page asks for a key first");
    // A wrong key is refused with the API's words.
    b.css("#key-input").await.send_keys("nope").await.unwrap();
    b.css("#key-form button").await.click().await.unwrap();
    b.until(
        "the refusal",
        Duration::from_secs(10),
        "return document.querySelector('#key-error').textContent === 'invalid API key'",
    )
    .await;
    b.css("#key-input")
        .await
        .send_keys("key-alpha")
        .await
        .unwrap();
    b.css("#key-form button").await.click().await.unwrap();
    b.until(
        "the form",
        Duration::from_secs(10),
        "return !document.querySelector('#content').hidden && \
         sessionStorage.getItem('imgbatch.apiKey') === 'key-alpha'",
    )
    .await;

    let file = csv_file(&db, "mine.csv", &csv(&[("1", "Mine", img.as_str())]));
    upload_through_page(&b, &file).await;
    let mine = request_page_id(&b).await;
    wait_status(&b, "Completed").await;
    thumbnails(&b, 1).await;

    // The download needs the header: fetched by the page, saved from memory.
    b.css("a[href$='/outputs.zip']")
        .await
        .click()
        .await
        .unwrap();
    let zip = b
        .download(&format!("{mine}-outputs.zip"), Duration::from_secs(15))
        .await;
    assert_eq!(zip_names(&zip).len(), 2);
    let urls = b
        .js(
            "return performance.getEntriesByType('resource').map(e => e.name).join(' ')",
            vec![],
        )
        .await;
    assert!(!urls.as_str().unwrap().contains("key-alpha"), "{urls}");

    b.open(&app.url("/requests")).await;
    let listed = b
        .until(
            "the list",
            Duration::from_secs(10),
            "const l = [...document.querySelectorAll('#request-list li[data-id]')]; \
             return l.length ? l.map(li => li.dataset.id) : null",
        )
        .await;
    assert_eq!(listed, json!([mine]), "only this key's request");

    // Another key's request page says not found, as the API does.
    b.open(&app.url(&format!("/requests/{theirs}"))).await;
    b.until(
        "not found",
        Duration::from_secs(10),
        "return document.body.innerText.includes('Request ID not found')",
    )
    .await;
}

/// Without a browser: the pages' policy and caching, the assets' names and ETags, and which
/// answers are HTML and which JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_policy_assets_and_not_found() {
    let db = TestDb::sqlite().await;
    let app = TestApp::start(db.config()).await;
    let id = app
        .upload_ok(csv(&[("1", "Shirt", "https://example.com/a.jpg")]))
        .await;
    let mut home = String::new();
    for path in ["/", "/requests", &format!("/requests/{id}")] {
        let resp = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.starts_with(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'"
            ),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        let page = resp.text().await.unwrap();
        assert!(
            !page.contains("style=") && !page.contains("<script>"),
            "{path}"
        );
        if path == "/" {
            home = page;
        }
    }

    // Assets: hashed names, a year of cache, ETag; an old name is gone.
    let js = home
        .split('"')
        .find(|s| s.starts_with("/assets/app.") && s.ends_with(".js"))
        .expect("the page names its script");
    let resp = app.http.get(app.url(js)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        resp.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let etag = resp.headers()["etag"].clone();
    let again = app
        .http
        .get(app.url(js))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let old = app
        .http
        .get(app.url("/assets/app.0000000000000000.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 404);

    // Unknown request pages and paths: HTML for a browser, JSON for the rest; /api stays JSON.
    let unknown = app.url("/requests/0193c1f4-0000-7000-8000-000000000000");
    for (url, accept, status, html) in [
        (unknown.clone(), "*/*", 404, true),
        (app.url("/requests/not-an-id"), "*/*", 404, true),
        (app.url("/no/such/page"), "text/html,*/*;q=0.8", 404, true),
        (app.url("/no/such/page"), "*/*", 404, false),
        (app.url("/api/nope"), "text/html", 404, false),
    ] {
        let resp = app
            .http
            .get(&url)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{url}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(ct.starts_with("text/html"), html, "{url}: {ct}");
        if html {
            let csp = resp.headers()["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("style-src 'self'"), "{url}: {csp}");
        }
    }
}
