//! Upload, status and output.csv (issue 2): what is accepted, what is refused and how, and
//! that a refusal stores nothing.

use serde_json::Value;

use crate::common::{csv, TestApp};
use crate::db_test;

/// Starts the API without workers, so stored rows stay as uploaded.
async fn api_only(db: &crate::common::TestDb) -> TestApp {
    let mut c = db.config();
    c.workers.workers = 0;
    c.limits.max_rows = 50;
    c.limits.max_urls_per_product = 5;
    c.limits.max_upload_bytes = 64 * 1024;
    TestApp::start(c).await
}

/// (serial, name, URLs) of a stored product.
type Expected = (i64, &'static str, Vec<&'static str>);
/// (line, column) of a reported CSV error.
type ErrorAt = (u64, Option<&'static str>);

async fn count_rows(app: &TestApp) -> i64 {
    app.core().count_requests().await.unwrap()
}

db_test!(accepts_every_csv_form, |db| {
    let app = api_only(&db).await;
    let cases: Vec<(&str, String, Vec<Expected>)> = vec![
        (
            "quoted URL cell",
            csv(&[("1", "SKU1", "https://a.test/1.jpg,https://a.test/2.jpg")]),
            vec![(1, "SKU1", vec!["https://a.test/1.jpg", "https://a.test/2.jpg"])],
        ),
        (
            "unquoted URLs spilling into extra columns, 1. serials, CRLF, BOM, blank lines",
            "\u{feff}S. No.,Product Name,Input Image Urls\r\n1.,SKU1,https://a.test/1.jpg,https://a.test/2.jpg\r\n\r\n2.,SKU2,http://a.test/3.png\r\n\r\n".into(),
            vec![
                (1, "SKU1", vec!["https://a.test/1.jpg", "https://a.test/2.jpg"]),
                (2, "SKU2", vec!["http://a.test/3.png"]),
            ],
        ),
        (
            "other header spellings, whitespace-separated URLs",
            "serial_number,ProductName,InputImageUrls\n7,Mug,\"https://a.test/m1.jpg https://a.test/m2.jpg\"\n".into(),
            vec![(7, "Mug", vec!["https://a.test/m1.jpg", "https://a.test/m2.jpg"])],
        ),
        (
            "columns in another order",
            "Input Image URLs,Serial Number,Product Name\nhttps://a.test/x.jpg,3,Cup\n".into(),
            vec![(3, "Cup", vec!["https://a.test/x.jpg"])],
        ),
    ];
    for (what, body, expected) in cases {
        let (code, resp) = app.upload(body).await;
        assert_eq!(code, 200, "{what}: {resp}");
        let id = resp["requestId"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{what}: {id}");
        let (code, status) = app.status(id).await;
        assert_eq!(code, 200);
        assert_eq!(status["status"], "pending", "{what}");
        let products = status["products"].as_array().unwrap();
        assert_eq!(products.len(), expected.len(), "{what}");
        for (p, (serial, name, urls)) in products.iter().zip(&expected) {
            assert_eq!(p["serialNumber"], *serial, "{what}");
            assert_eq!(p["productName"], *name, "{what}");
            assert_eq!(p["inputImageUrls"], serde_json::json!(urls), "{what}");
            assert_eq!(p["status"], "pending");
        }
        let total: usize = expected.iter().map(|e| e.2.len()).sum();
        assert_eq!(status["progress"]["totalImages"], total);
        assert_eq!(status["outputImageUrls"].as_array().unwrap().len(), total);
        assert!(status["outputImageUrls"]
            .as_array()
            .unwrap()
            .iter()
            .all(Value::is_null));
    }
});

db_test!(accepts_semicolon_and_tab_files, |db| {
    let app = api_only(&db).await;
    let cases: [(&str, &[u8], Vec<Expected>); 3] = [
        (
            "semicolons, as Excel saves them in many locales",
            include_bytes!("../corpus/csv/valid_semicolon_excel.csv"),
            vec![
                (
                    1,
                    "Mug; blue, large",
                    vec!["https://a.example/1.jpg", "https://a.example/2.jpg"],
                ),
                (
                    2,
                    "Cup",
                    vec!["https://a.example/3.jpg", "https://a.example/4.jpg"],
                ),
                (
                    3,
                    "Plate",
                    vec!["https://a.example/5.jpg", "https://a.example/6.jpg"],
                ),
            ],
        ),
        (
            "tabs",
            include_bytes!("../corpus/csv/valid_tab.csv"),
            vec![
                (
                    1,
                    "Mug,\tblue; large",
                    vec!["https://a.example/1.jpg", "https://a.example/2.jpg"],
                ),
                (
                    2,
                    "Cup",
                    vec!["https://a.example/3.jpg", "https://a.example/4.jpg"],
                ),
            ],
        ),
        (
            "commas, unchanged",
            b"S. No.,Product Name,Input Image Urls\n1,A;B,https://a.example/1.jpg\n",
            vec![(1, "A;B", vec!["https://a.example/1.jpg"])],
        ),
    ];
    for (what, body, expected) in cases {
        let (code, resp) = app.upload(body.to_vec()).await;
        assert_eq!(code, 200, "{what}: {resp}");
        let id = resp["requestId"].as_str().unwrap();
        let (code, status) = app.status(id).await;
        assert_eq!(code, 200);
        let products = status["products"].as_array().unwrap();
        assert_eq!(products.len(), expected.len(), "{what}: {status}");
        for (p, (serial, name, urls)) in products.iter().zip(&expected) {
            assert_eq!(p["serialNumber"], *serial, "{what}");
            assert_eq!(p["productName"], *name, "{what}");
            assert_eq!(p["inputImageUrls"], serde_json::json!(urls), "{what}");
        }
    }

    // A header no delimiter fits: one error on its line, quoting the header row.
    let (code, resp) = app
        .upload(include_bytes!("../corpus/csv/no_delimiter_fits.csv").to_vec())
        .await;
    assert_eq!(code, 400, "{resp}");
    let errors = resp["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{resp}");
    assert_eq!(errors[0]["line"], 1);
    assert_eq!(errors[0]["column"], Value::Null);
    let message = errors[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("no delimiter (comma, semicolon, tab) gives the header columns")
            && message.contains("\"S. No.|Product Name|Input Image Urls\""),
        "{message}"
    );
    assert_eq!(count_rows(&app).await, 3);
});

db_test!(
    rejects_bad_csvs_with_line_numbers_and_stores_nothing,
    |db| {
        let app = api_only(&db).await;
        let cases: Vec<(&str, String, Vec<ErrorAt>)> = vec![
        ("missing URL column", "S. No.,Product Name\n1,A\n".into(), vec![(1, Some("Input Image Urls"))]),
        (
            "bad serials and a blank name",
            csv(&[("0", "A", "https://a.test/1.jpg"), ("x", "B", "https://a.test/2.jpg"), ("3", " ", "https://a.test/3.jpg")]),
            vec![(2, Some("S. No.")), (3, Some("S. No.")), (4, Some("Product Name"))],
        ),
        (
            "duplicate serial",
            csv(&[("1", "A", "https://a.test/1.jpg"), ("1", "B", "https://a.test/2.jpg")]),
            vec![(3, Some("S. No."))],
        ),
        (
            "bad URLs",
            csv(&[("1", "A", "ftp://a.test/1.jpg"), ("2", "B", "/relative.jpg"), ("3", "C", "javascript:alert(1)")]),
            vec![(2, Some("Input Image Urls")), (3, Some("Input Image Urls")), (4, Some("Input Image Urls"))],
        ),
        ("no URLs", csv(&[("1", "A", "")]), vec![(2, Some("Input Image Urls"))]),
        (
            "too many URLs in a row",
            csv(&[("1", "A", "http://a.test/1,http://a.test/2,http://a.test/3,http://a.test/4,http://a.test/5,http://a.test/6")]),
            vec![(2, Some("Input Image Urls"))],
        ),
        ("header only", "S. No.,Product Name,Input Image Urls\n\n".into(), vec![]),
        ("empty file", String::new(), vec![]),
        ("invalid UTF-8 is reported", "S. No.,Product Name,Input Image Urls\n1,\u{0}".into(), vec![]),
    ];
        for (what, body, expected) in cases {
            let (code, resp) = app.upload(body).await;
            assert_eq!(code, 400, "{what}: {resp}");
            assert_eq!(resp["message"], "Invalid CSV format", "{what}");
            let errors = resp["errors"].as_array().unwrap();
            assert!(!errors.is_empty(), "{what}");
            for e in errors {
                assert!(
                    e["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{what}: {e}"
                );
            }
            if !expected.is_empty() {
                let got: Vec<(u64, Option<&str>)> = errors
                    .iter()
                    .map(|e| (e["line"].as_u64().unwrap(), e["column"].as_str()))
                    .collect();
                assert_eq!(got, expected, "{what}: {resp}");
            }
        }
        // A file with one good row and one bad row stores nothing either.
        let (code, _) = app
            .upload(csv(&[
                ("1", "A", "https://a.test/1.jpg"),
                ("2", "", "https://a.test/2.jpg"),
            ]))
            .await;
        assert_eq!(code, 400);
        assert_eq!(count_rows(&app).await, 0);

        // Non-UTF-8 bytes.
        let mut bytes = b"S. No.,Product Name,Input Image Urls\n1,".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe, b',', b'h']);
        let (code, resp) = app.upload(bytes).await;
        assert_eq!(code, 400, "{resp}");
        assert_eq!(resp["errors"][0]["line"], 2);
        assert_eq!(count_rows(&app).await, 0);
    }
);

db_test!(caps_reported_errors_at_100, |db| {
    let app = api_only(&db).await;
    let mut body = String::from("S. No.,Product Name,Input Image Urls\n");
    for i in 0..40 {
        body.push_str(&format!("{i}x,,ftp://a/{i}\n"));
    }
    let (code, resp) = app.upload(body).await;
    assert_eq!(code, 400);
    assert_eq!(resp["errors"].as_array().unwrap().len(), 100);
});

db_test!(refuses_too_many_rows, |db| {
    let app = api_only(&db).await;
    let rows: Vec<(String, String, String)> = (1..=51)
        .map(|i| {
            (
                i.to_string(),
                format!("P{i}"),
                format!("https://a.test/{i}.jpg"),
            )
        })
        .collect();
    let (code, resp) = app.upload(csv(&rows)).await;
    assert_eq!(code, 400, "{resp}");
    assert!(
        resp["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("50"),
        "{resp}"
    );
    assert_eq!(count_rows(&app).await, 0);
});

db_test!(other_client_errors_are_precise, |db| {
    let app = api_only(&db).await;
    // Oversized upload: 413, and nothing stored.
    let mut big = String::from("S. No.,Product Name,Input Image Urls\n");
    let mut i = 0;
    while big.len() < 70 * 1024 {
        i += 1;
        big.push_str(&format!("{i},P{i},https://a.test/{i}.jpg\n"));
    }
    let (code, resp) = app.upload(big).await;
    assert_eq!(code, 413, "{resp}");
    let message = resp["message"].as_str().unwrap();
    assert!(
        message.contains("limit of 65536 bytes (64 KiB)")
            && message.contains("IMGBATCH_MAX_UPLOAD_BYTES"),
        "{resp}"
    );

    // The wrong method on a known path: 405, JSON like every error.
    for (method, path) in [
        (reqwest::Method::GET, "/api/upload"),
        (reqwest::Method::DELETE, "/api/status/x"),
        (reqwest::Method::POST, "/healthz"),
        (reqwest::Method::PUT, "/images/x/0-y.jpg"),
    ] {
        let resp = app
            .http
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 405, "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(method.as_str()) && message.contains("/docs"),
            "{body}"
        );
    }

    // The root names the API and its documentation.
    let resp = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = resp.text().await.unwrap();
    assert!(
        page.contains("href=\"/docs\"") && page.contains("/api/upload"),
        "{page}"
    );
    // And the API page says whose API it is.
    let docs = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status().as_u16(), 200);
    let docs = docs.text().await.unwrap();
    assert!(docs.contains("<title>imgbatch API</title>"), "{docs}");

    // Not multipart: 415.
    let resp = app
        .http
        .post(app.url("/api/upload"))
        .body("S. No.,Product Name\n")
        .header("content-type", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let body: Value = resp.json().await.unwrap();
    assert!(body["message"].is_string());

    // Multipart without a file part: 400.
    let form = reqwest::multipart::Form::new().text("other", "x");
    let resp = app
        .http
        .post(app.url("/api/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("file"), "{body}");

    // A bad webhookUrl: 400, nothing stored.
    let (code, resp) = app
        .upload_with(
            csv(&[("1", "A", "https://a.test/1.jpg")]),
            Some("not a url"),
            &[],
        )
        .await;
    assert_eq!(code, 400, "{resp}");
    assert!(resp["message"].as_str().unwrap().contains("webhookUrl"));
    assert_eq!(count_rows(&app).await, 0);

    // Unknown endpoint: JSON 404.
    let resp = app.http.get(app.url("/api/nope")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = resp.json().await.unwrap();
    assert!(body["message"].is_string());
});

db_test!(status_and_output_csv, |db| {
    let app = api_only(&db).await;
    let body = "S. No.,Product Name,Input Image Urls\n1,=HYPERLINK(\"x\"),https://a.test/1.jpg\n2,Mug,\"https://a.test/2.jpg,https://a.test/3.jpg\"\n";
    let id = app.upload_ok(body).await;
    let (code, status) = app.status(&id).await;
    assert_eq!(code, 200);
    assert_eq!(status["requestId"], id);
    assert_eq!(status["progress"]["totalImages"], 3);
    assert_eq!(status["progress"]["completedImages"], 0);
    assert_eq!(status["progress"]["failedImages"], 0);
    assert!(status["webhook"].is_null());
    assert!(status["createdAt"].is_string() && status["updatedAt"].is_string());

    for bad in ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "1"] {
        let (code, body) = app.status(bad).await;
        assert_eq!(code, 404, "{bad}");
        assert_eq!(body["message"], "Request ID not found");
    }

    let resp = app
        .http
        .get(app.url(&format!("/api/requests/{id}/output.csv")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = resp.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "S. No.,Product Name,Input Image Urls,Output Image Urls"
    );
    assert_eq!(
        lines[1],
        "1,\"'=HYPERLINK(\"\"x\"\")\",https://a.test/1.jpg,"
    );
    assert_eq!(
        lines[2],
        "2,Mug,\"https://a.test/2.jpg,https://a.test/3.jpg\","
    );
    let resp = app
        .http
        .get(app.url("/api/requests/not-a-uuid/output.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
});

db_test!(idempotent_repeat_returns_the_first_request, |db| {
    let app = api_only(&db).await;
    let body = csv(&[("1", "A", "https://a.test/1.jpg")]);
    let (c1, r1) = app
        .upload_with(body.clone(), None, &[("Idempotency-Key", "k-1")])
        .await;
    let (c2, r2) = app
        .upload_with(body.clone(), None, &[("Idempotency-Key", "k-1")])
        .await;
    assert_eq!((c1, c2), (200, 200));
    assert_eq!(r1["requestId"], r2["requestId"]);
    assert_eq!(count_rows(&app).await, 1);
    // The same key with a different upload is a client mistake, not a silent replay.
    let (c3, r3) = app
        .upload_with(
            csv(&[("2", "B", "https://a.test/2.jpg")]),
            None,
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    assert_eq!(c3, 422, "{r3}");
    // Without a key, the same CSV makes a new request.
    let (_, r4) = app.upload(body).await;
    assert_ne!(r4["requestId"], r1["requestId"]);
    assert_eq!(count_rows(&app).await, 2);
});

db_test!(concurrent_uploads_are_stored_whole, |db| {
    let app = std::sync::Arc::new(api_only(&db).await);
    let mut tasks = Vec::new();
    for n in 0..20 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let rows: Vec<String> = (1..=10)
                .map(|i| format!("{i},U{n}P{i},\"https://a.test/{n}/{i}a.jpg,https://a.test/{n}/{i}b.jpg\"\n"))
                .collect();
            let body = format!("S. No.,Product Name,Input Image Urls\n{}", rows.concat());
            (n, app.upload_ok(body).await)
        }));
    }
    for t in tasks {
        let (n, id) = t.await.unwrap();
        let (code, status) = app.status(&id).await;
        assert_eq!(code, 200);
        let products = status["products"].as_array().unwrap();
        assert_eq!(products.len(), 10);
        for (i, p) in products.iter().enumerate() {
            assert_eq!(p["productName"], format!("U{n}P{}", i + 1));
            assert_eq!(
                p["inputImageUrls"][1],
                format!("https://a.test/{n}/{}b.jpg", i + 1)
            );
        }
        assert_eq!(status["progress"]["totalImages"], 20);
    }
    assert_eq!(count_rows(&app).await, 20);
});

db_test!(ten_thousand_rows_are_accepted, |db| {
    let mut c = db.config();
    c.workers.workers = 0;
    let app = TestApp::start(c).await;
    let mut body = String::from("S. No.,Product Name,Input Image Urls\n");
    for i in 1..=10_000 {
        body.push_str(&format!(
            "{i},Product {i},\"https://img.test/{i}/a.jpg,https://img.test/{i}/b.jpg,https://img.test/{i}/c.jpg\"\n"
        ));
    }
    let started = std::time::Instant::now();
    let id = app.upload_ok(body).await;
    eprintln!(
        "10,000 rows ({}) accepted in {:?}",
        if db.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        },
        started.elapsed()
    );
    let (_, status) = app.status(&id).await;
    assert_eq!(status["progress"]["totalImages"], 30_000);
    assert_eq!(status["products"][9999]["serialNumber"], 10_000);
});

db_test!(health_and_readiness, |db| {
    let app = api_only(&db).await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["database"],
        if db.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        }
    );
    assert_eq!(r_header(&app).await, "nosniff");
});

async fn r_header(app: &TestApp) -> String {
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    r.headers()["x-content-type-options"]
        .to_str()
        .unwrap()
        .to_string()
}
