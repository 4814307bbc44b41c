//! The OpenAPI 3.1 description, generated from the handlers and types themselves so it cannot
//! drift from what the service does; served at /api/openapi.json, browsable at /docs.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    events, health, output_csv, outputs_zip, report_csv, requests, status, upload, webhook_retry,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "imgbatch API",
        description = "Upload a CSV of products and image URLs; imgbatch downloads, compresses and stores every image in the background, reports progress, and calls a webhook when a request is done.",
        license(name = "MIT")
    ),
    paths(
        upload::upload,
        status::status,
        output_csv::output_csv,
        report_csv::report_csv,
        outputs_zip::outputs_zip,
        requests::list,
        requests::cancel,
        requests::retry,
        events::events,
        webhook_retry::retry,
        health::healthz,
        health::readyz,
        health::metrics,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "requests", description = "Upload CSVs and follow their processing"),
        (name = "webhooks", description = "Webhook deliveries"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

/// API keys are bearer tokens; they are only required when the service has keys configured.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_every_endpoint_and_error_body() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        assert_eq!(doc["info"]["title"], "imgbatch API");
        for path in [
            "/api/upload",
            "/api/status/{requestId}",
            "/api/requests/{requestId}/output.csv",
            "/api/requests/{requestId}/report.csv",
            "/api/requests/{requestId}/outputs.zip",
            "/api/requests/{requestId}/webhook/retry",
            "/api/requests",
            "/api/requests/{requestId}/cancel",
            "/api/requests/{requestId}/retry",
            "/api/requests/{requestId}/events",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        let schemas = &doc["components"]["schemas"];
        for s in [
            "StatusBody",
            "ErrorBody",
            "CsvError",
            "UploadResponse",
            "WebhookBody",
            "RequestList",
            "RequestSummary",
            "Savings",
            "RetryAnswer",
        ] {
            assert!(schemas[s].is_object(), "{s} missing");
        }
        assert_eq!(
            doc["paths"]["/api/upload"]["post"]["responses"]["413"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        // Examples a user would send or read: no made-up line numbers, no "string" webhook.
        let text = doc.to_string();
        assert!(
            !text.contains("9007199254740991"),
            "a max-int example is left"
        );
        assert_eq!(
            schemas["UploadForm"]["properties"]["webhookUrl"]["example"],
            ""
        );
        assert_eq!(
            schemas["InvalidUploadBody"]["example"]["errors"][0]["line"],
            3
        );
        // The per-upload options, as form fields and as query parameters; shown in status.
        let upload = &doc["paths"]["/api/upload"]["post"];
        let query: Vec<&str> = upload["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "query")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for option in ["quality", "maxWidth", "maxHeight", "format"] {
            assert!(
                schemas["UploadForm"]["properties"][option].is_object(),
                "form field {option}"
            );
            assert!(
                query.contains(&option),
                "query parameter {option}: {query:?}"
            );
        }
        assert!(
            schemas["StatusBody"]["properties"]["options"].is_object(),
            "options in the status body"
        );
        let codes: Vec<&str> = schemas["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let all: Vec<&str> = crate::failure::ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!(codes, all, "the document lists every error code");
        let statuses = schemas["Status"]["enum"].as_array().unwrap();
        assert_eq!(statuses.len(), crate::domain::Status::ALL.len());
        assert!(statuses.iter().any(|s| s == "cancelled"));
    }
}
