//! report.csv and outputs.zip (issue 18): the report's figures are the stored outputs', the
//! archive opens with standard tools and holds every output byte for byte and nothing else,
//! and hostile product names stay inside it. On both databases; the S3 run is in scale.rs's
//! style (the real binary against moto).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use crate::common::origin::{self, Origin};
use crate::common::process::{client_for, spawn_binary, wait_ready};
use crate::common::{csv, TestApp, TestDb};
use crate::db_test;

/// GETs a path: status, headers, body.
pub async fn get(app: &TestApp, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = app.http.get(app.url(path)).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.unwrap().to_vec())
}

/// The records of report.csv, by column name.
pub fn report_rows(bytes: &[u8]) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_reader(bytes);
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            header
                .iter()
                .cloned()
                .zip(rec.iter().map(String::from))
                .collect()
        })
        .collect()
}

/// Every entry of a ZIP, by name, after `python3 -m zipfile -t` and `unzip -t` (where
/// installed) found it sound.
pub fn unzip(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outputs.zip");
    std::fs::write(&path, bytes).unwrap();
    let checked = std::process::Command::new("python3")
        .args(["-m", "zipfile", "-t"])
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(
        checked.status.success(),
        "python's zipfile refuses the archive: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    if let Ok(out) = std::process::Command::new("unzip")
        .arg("-tq")
        .arg(&path)
        .output()
    {
        assert!(
            out.status.success(),
            "unzip -t: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut entries = BTreeMap::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        assert_eq!(f.compression(), zip::CompressionMethod::Stored);
        let name = f.name().to_string();
        // Inside the archive: one plain component, nothing a file system would take for a path
        // or a control.
        assert!(f.enclosed_name().is_some(), "{name:?} escapes the archive");
        assert!(
            !name.contains('/') && !name.contains('\\') && !name.contains(".."),
            "{name:?}"
        );
        assert!(!name.chars().any(char::is_control), "{name:?}");
        assert!(name.len() <= 200, "{name:?} is too long");
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        assert!(entries.insert(name, data).is_none(), "a name twice");
    }
    entries
}

/// Checks report.csv and outputs.zip of a settled request against its status body, with each
/// output's bytes fetched by `fetch`. Returns the archive's entries.
pub async fn check_report_and_bundle(
    app: &TestApp,
    id: &str,
    status: &Value,
    outputs: &HashMap<String, Vec<u8>>,
) -> BTreeMap<String, Vec<u8>> {
    let (code, headers, report) = get(app, &format!("/api/requests/{id}/report.csv")).await;
    assert_eq!(code, 200);
    assert_eq!(headers["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        headers["content-disposition"],
        format!("attachment; filename=\"{id}-report.csv\"").as_str()
    );
    let rows = report_rows(&report);
    let images: Vec<(&Value, &Value)> = status["products"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["images"].as_array().unwrap().iter().map(move |i| (p, i)))
        .collect();
    assert_eq!(rows.len(), images.len(), "one row an image");
    let mut wanted = BTreeMap::new();
    for (row, (product, image)) in rows.iter().zip(&images) {
        assert_eq!(row["S. No."], product["serialNumber"].to_string());
        assert_eq!(
            row["Input Image Url"],
            image["inputImageUrl"].as_str().unwrap()
        );
        assert_eq!(row["Status"], image["status"].as_str().unwrap());
        let output = image["outputImageUrl"].as_str().unwrap_or("");
        assert_eq!(row["Output Image Url"], output);
        if output.is_empty() {
            assert_eq!(row["Error Code"], image["errorCode"].as_str().unwrap());
            assert!(!row["Error"].is_empty());
            assert_eq!(row["Bytes Out"], "");
            continue;
        }
        // The figures are the stored output's.
        let bytes = &outputs[output];
        assert_eq!(row["Bytes Out"], bytes.len().to_string());
        let decoded = image::load_from_memory(bytes).unwrap();
        assert_eq!(row["Output Width"], decoded.width().to_string());
        assert_eq!(row["Output Height"], decoded.height().to_string());
        assert_eq!(row["Output Format"], image["format"].as_str().unwrap());
        assert_eq!(row["Codec"], image["codec"].as_str().unwrap());
        assert!(row["Bytes In"].parse::<u64>().unwrap() > 0);
        assert!(!row["Input Format"].is_empty());
        let ext = match image["format"].as_str().unwrap() {
            "jpeg" => "jpg",
            other => other,
        };
        let name = format!(
            "{}_{}.{ext}",
            row["S. No."],
            row["Image Position"].parse::<u32>().unwrap()
        );
        wanted.insert(name, bytes.clone());
    }

    let (code, headers, zip) = get(app, &format!("/api/requests/{id}/outputs.zip")).await;
    assert_eq!(code, 200);
    assert_eq!(headers["content-type"], "application/zip");
    assert_eq!(
        headers["content-disposition"],
        format!("attachment; filename=\"{id}-outputs.zip\"").as_str()
    );
    let entries = unzip(&zip);
    assert_eq!(entries["report.csv"], report, "the same report inside");
    // Every completed output, byte for byte, and nothing else: `{serial}_{name}_{pos}.{ext}`,
    // the extension the output's format's.
    let mut got = BTreeMap::new();
    for (name, data) in &entries {
        if name == "report.csv" {
            continue;
        }
        let (serial, rest) = name.split_once('_').unwrap();
        let (_, position) = rest.rsplit_once('_').unwrap();
        got.insert(format!("{serial}_{position}"), data.clone());
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        wanted.keys().collect::<Vec<_>>()
    );
    assert!(got == wanted, "an entry differs from its output");
    entries
}

/// The outputs of a status body, fetched from their URLs.
async fn fetch_outputs(app: &TestApp, status: &Value) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    for url in status["outputImageUrls"].as_array().unwrap() {
        if let Some(url) = url.as_str() {
            let bytes = app
                .http
                .get(url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            out.insert(url.to_string(), bytes.to_vec());
        }
    }
    out
}

db_test!(report_and_bundle_hold_every_output_and_nothing_else, |db| {
    let origin = Origin::start().await;
    let a = origin.put("a.jpg", "image/jpeg", origin::jpeg(64, 48, 90));
    let b = origin.put("b.png", "image/png", origin::png(40, 30));
    let missing = origin.url("/nope.jpg");
    let long = "ü".repeat(150);
    let app = TestApp::start(db.config()).await;
    let id = app
        .upload_ok(csv(&[
            ("1", "../../etc/passwd", &format!("{a},{b}")),
            ("2", "a/b\\c", &format!("{missing} {a}")),
            ("3", &long, &b),
            ("4", "Controls", &a),
        ]))
        .await;
    // A name no CSV may carry, put in the database directly: control characters (Postgres
    // text holds no NUL).
    let chr = if db.is_postgres() { "chr" } else { "char" };
    db.execute(&format!(
        "UPDATE products SET product_name = 'x' || {chr}(1) || {chr}(27) || '..' || {chr}(10) \
         || 'y' WHERE serial_number = 4"
    ))
    .await;
    let status = app.wait_settled(&id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "completed_with_errors", "{status}");
    let outputs = fetch_outputs(&app, &status).await;
    let entries = check_report_and_bundle(&app, &id, &status, &outputs).await;
    // Five outputs (the duplicate of a.jpg too) and the report.
    assert_eq!(entries.len(), 6, "{:?}", entries.keys());
    let names: Vec<&str> = entries.keys().map(String::as_str).collect();
    assert!(names.contains(&"1_____etc_passwd_1.jpg"), "{names:?}");
    assert!(names.contains(&"2_a_b_c_2.jpg"), "{names:?}");
    assert!(names.contains(&"4_x____y_1.jpg"), "{names:?}");
    assert!(names
        .iter()
        .any(|n| n.starts_with("3_üüü") && n.contains("_1.")));

    // Another key sees none of it; an unknown ID is 404.
    for path in ["report.csv", "outputs.zip"] {
        let other = uuid::Uuid::now_v7();
        let (code, _, body) = get(&app, &format!("/api/requests/{other}/{path}")).await;
        assert_eq!(code, 404);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["message"], "Request ID not found");
        let (code, _, _) = get(&app, &format!("/api/requests/not-a-uuid/{path}")).await;
        assert_eq!(code, 404);
    }
});

db_test!(another_key_gets_404_for_the_files, |db| {
    let origin = Origin::start().await;
    let a = origin.put("a.jpg", "image/jpeg", origin::jpeg(16, 16, 90));
    let mut config = db.config();
    config.api_keys = vec!["key-a".into(), "key-b".into()];
    let app = TestApp::start(config).await;
    let part = reqwest::multipart::Part::bytes(csv(&[("1", "A", &a)]).into_bytes())
        .file_name("p.csv")
        .mime_str("text/csv")
        .unwrap();
    let resp = app
        .http
        .post(app.url("/api/upload"))
        .bearer_auth("key-a")
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let id = resp.json::<Value>().await.unwrap()["requestId"]
        .as_str()
        .unwrap()
        .to_string();
    for path in ["report.csv", "outputs.zip"] {
        let url = app.url(&format!("/api/requests/{id}/{path}"));
        let mine = app
            .http
            .get(&url)
            .bearer_auth("key-a")
            .send()
            .await
            .unwrap();
        assert_eq!(mine.status().as_u16(), 200, "{path}");
        let theirs = app
            .http
            .get(&url)
            .bearer_auth("key-b")
            .send()
            .await
            .unwrap();
        assert_eq!(theirs.status().as_u16(), 404, "{path}");
        let nobody = app.http.get(&url).send().await.unwrap();
        assert_eq!(nobody.status().as_u16(), 401, "{path}");
    }
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundle_reads_outputs_back_from_s3() {
    let Some((endpoint, bucket)) = crate::scale::s3_bucket().await else {
        return;
    };
    let db = TestDb::sqlite().await;
    let origin = Origin::start().await;
    let a = origin.put("a.jpg", "image/jpeg", origin::jpeg(64, 48, 90));
    let b = origin.put("b.png", "image/png", origin::png_rgba(40, 30));
    let env = crate::scale::s3_env(&endpoint, &format!("s3://{bucket}/outputs"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (_svc, base) = spawn_binary(&db, &env);
    let app = client_for(base);
    wait_ready(&app).await;
    let id = app
        .upload_ok(csv(&[("1", "A/../B", &format!("{a},{b}")), ("2", "C", &a)]))
        .await;
    let status = app.wait_settled(&id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "completed", "{status}");
    let outputs = crate::scale::s3_outputs(&endpoint, &bucket, &status).await;
    let entries = check_report_and_bundle(&app, &id, &status, &outputs).await;
    assert_eq!(entries.len(), 4, "{:?}", entries.keys());
}
