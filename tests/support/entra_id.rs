//! The fake Entra ID token endpoint, `/{tenant}/oauth2/v2.0/token`, served
//! over TLS (its CA is written to a file the binary trusts through
//! `SSL_CERT_FILE`): the real `ClientSecretCredential` signs in against it.
//! It issues the bearer tokens the fake ARM accepts, or, flooded, answers
//! with a body without end.

use std::collections::HashMap;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AzureState, Shared, endless_body, lock};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "11112222-bbbb-3333-cccc-4444dddd5555";
pub const CLIENT_SECRET: &str = "s3cr3t-client-value-DO-NOT-LOG";

pub(super) async fn token(
    State(st): State<Shared<AzureState>>,
    UrlPath(tenant): UrlPath<String>,
    body: String,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let mut s = lock(&st);
    s.token_forms.push(form.clone());
    if s.flood_tokens {
        let body = endless_body("{\"token_type\": \"Bearer\", ", s.flooded.clone());
        return (StatusCode::OK, [("content-type", "application/json")], body).into_response();
    }
    let ok = tenant == TENANT
        && form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
        && form.get("grant_type").map(String::as_str) == Some("client_credentials");
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}).to_string(),
        )
            .into_response();
    }
    let n = s.issued.len();
    let t = format!("bearer-token-{n}-DO-NOT-LOG");
    s.issued.push(t.clone());
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": t}).to_string(),
    )
        .into_response()
}
