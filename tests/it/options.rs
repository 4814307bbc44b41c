//! Per-upload options over HTTP (issue 17): refused with their field named and nothing stored,
//! applied to every output, shown in the status body, part of the idempotency digest, and
//! output.csv giving the uploaded file back with its own layout.

use std::time::Duration;

use serde_json::Value;

use crate::common::origin::{self, Origin};
use crate::common::{images, TestApp};
use crate::db_test;

async fn upload(
    app: &TestApp,
    csv: &str,
    fields: &[(&str, &str)],
    query: &str,
    key: Option<&str>,
) -> (u16, Value) {
    let part = reqwest::multipart::Part::bytes(csv.as_bytes().to_vec())
        .file_name("products.csv")
        .mime_str("text/csv")
        .unwrap();
    let mut form = reqwest::multipart::Form::new().part("file", part);
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    let mut req = app
        .http
        .post(app.url(&format!("/api/upload{query}")))
        .multipart(form);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

db_test!(
    invalid_options_are_refused_by_name_and_store_nothing,
    |db| {
        let app = TestApp::start(db.config()).await;
        let csv = "S. No.,Product Name,Input Image Urls\n1,A,http://127.0.0.1:9/a.jpg\n";
        for (field, value) in [
            ("quality", "0"),
            ("quality", "101"),
            ("quality", "high"),
            ("maxWidth", "-1"),
            ("maxWidth", "0"),
            ("maxHeight", "70000"),
            ("maxHeight", "12.5"),
            ("format", "png"),
        ] {
            let (status, body) = upload(&app, csv, &[(field, value)], "", None).await;
            assert_eq!(status, 400, "{field}={value}: {body}");
            assert_eq!(body["errors"][0]["field"], field, "{body}");
            assert!(body["message"].as_str().unwrap().contains(field), "{body}");
            // As a query parameter too.
            let (status, body) = upload(&app, csv, &[], &format!("?{field}={value}"), None).await;
            assert_eq!(status, 400, "?{field}={value}: {body}");
            assert_eq!(body["errors"][0]["field"], field, "{body}");
        }
        assert_eq!(db.scalar("SELECT COUNT(*) FROM requests").await, 0);
    }
);

db_test!(options_are_applied_shown_and_part_of_the_digest, |db| {
    let origin = Origin::start().await;
    let app = TestApp::start(db.config()).await;
    let a = origin.put("a.jpg", "image/jpeg", origin::jpeg(800, 600, 90));
    let b = origin.put("b.png", "image/png", origin::png(300, 400));
    let csv = format!("sku;Product_Name;input image urls;Notes\nX1;Shoe;{a} {b};\"keep; me\"\n");
    // The form's quality wins over the query's; the query's box and format are taken.
    let fields = [("quality", "70")];
    let query = "?quality=20&maxWidth=200&maxHeight=200&format=webp";
    let csv = csv.replace("sku;", "S. No.;sku2;").replace("X1;", "1;X1;");
    let (status, body) = upload(&app, &csv, &fields, query, Some("k1")).await;
    assert_eq!(status, 200, "{body}");
    let id = body["requestId"].as_str().unwrap().to_owned();
    let status = app.wait_settled(&id, Duration::from_secs(30)).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(
        status["options"],
        serde_json::json!({"quality": 70, "maxWidth": 200, "maxHeight": 200, "format": "webp"})
    );
    for (img, (w, h)) in images(&status).iter().zip([(200, 150), (150, 200)]) {
        assert_eq!(img["format"], "webp", "{img}");
        assert_eq!(
            (img["width"].as_u64(), img["height"].as_u64()),
            (Some(w), Some(h))
        );
        let url = img["outputImageUrl"].as_str().unwrap();
        assert!(url.ends_with(".webp"), "{url}");
        let resp = app.http.get(url).send().await.unwrap();
        assert_eq!(resp.headers()["content-type"], "image/webp");
        let decoded = image::load_from_memory(&resp.bytes().await.unwrap()).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (w as u32, h as u32));
    }
    // The same file and options again: the same request; other options: a 422.
    let (s, again) = upload(&app, &csv, &fields, query, Some("k1")).await;
    assert_eq!((s, again["requestId"].as_str()), (200, Some(id.as_str())));
    let (s, body) = upload(&app, &csv, &[("quality", "71")], query, Some("k1")).await;
    assert_eq!(s, 422, "{body}");
    // output.csv: the file's own header, delimiter and extra column, then the outputs.
    let text = app
        .http
        .get(app.url(&format!("/api/requests/{id}/output.csv")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("S. No.;sku2;Product_Name;input image urls;Notes;Output Image Urls")
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&format!("1;X1;Shoe;{a} {b};\"keep; me\";")),
        "{row}"
    );
    assert!(row.contains(".webp,") && row.ends_with(".webp"), "{row}");
});
