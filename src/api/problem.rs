//! RFC 9457 problem details: the one error body of the HTTP API.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// Media type of a problem body (RFC 9457 §3).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Longest `detail` kept; a request can put arbitrary text (its path) into it, and an error
/// body should not echo kilobytes back.
const MAX_DETAIL: usize = 256;

/// An RFC 9457 problem details object; responds with its status and `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// URI naming the problem type; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the type; for `about:blank`, the status's reason phrase.
    pub title: String,
    /// The HTTP status code, repeated for clients that only keep the body.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Where to send the request instead (the `Location` of a 307); not in the body.
    #[serde(skip)]
    pub location: Option<String>,
    /// The risk rule that refused an outbound call (`tenant_blacklist`, ...): an extension
    /// member of the 409s of click-to-call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
}

impl Problem {
    /// A problem of type `about:blank` for `status`, titled with its reason phrase.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push('…');
        }
        Self {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            location: None,
            rule: None,
        }
    }

    /// 307: the resource is served by another node of the cluster, at `location` (the
    /// same method and body go there).
    pub fn elsewhere(location: String, detail: impl Into<String>) -> Self {
        let mut p = Self::new(StatusCode::TEMPORARY_REDIRECT, detail);
        p.location = Some(location);
        p
    }

    /// 404: nothing is routed at this path.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// A JSON request body as `T`, or a 400 saying what is wrong with it.
    pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Self> {
        Json::<T>::from_bytes(body)
            .map(|b| b.0)
            .map_err(|e| Self::bad_request(e.body_text()))
    }

    /// 503: what the request needs does not answer now.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }
}

/// A handler's answer: its body as JSON, or the problem.
pub fn respond<T: Serialize>(answer: Result<T, Problem>) -> Response {
    match answer {
        Ok(body) => Json(body).into_response(),
        Err(problem) => problem.into_response(),
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let location = self
            .location
            .as_deref()
            .and_then(|l| HeaderValue::from_str(l).ok());
        let mut response = (status, Json(self)).into_response();
        if let Some(l) = location {
            response.headers_mut().insert(header::LOCATION, l);
        }
        // Json sets application/json; a problem body has its own media type.
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_has_reason_phrase_and_status() {
        let p = Problem::not_found("no route for GET /x");
        assert_eq!(p.kind, "about:blank");
        assert_eq!(p.title, "Not Found");
        assert_eq!(p.status, 404);
        assert_eq!(p.detail, "no route for GET /x");
    }

    #[test]
    fn long_detail_is_truncated_on_a_char_boundary() {
        let p = Problem::not_found("é".repeat(MAX_DETAIL));
        assert!(p.detail.len() <= MAX_DETAIL + '…'.len_utf8());
        assert!(p.detail.ends_with('…'));
    }

    #[test]
    fn elsewhere_is_a_307_with_its_location_outside_the_body() {
        let r =
            Problem::elsewhere("http://127.0.0.2:8080/agents/t/a".into(), "on n2").into_response();
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            "http://127.0.0.2:8080/agents/t/a"
        );
        let body = serde_json::to_value(Problem::elsewhere("x".into(), "on n2")).unwrap();
        assert!(body.get("location").is_none(), "{body}");
    }

    #[test]
    fn response_has_problem_media_type_and_status() {
        let r = Problem::new(StatusCode::METHOD_NOT_ALLOWED, "x").into_response();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
    }
}
