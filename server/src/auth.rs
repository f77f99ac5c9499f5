//! Bearer-key authentication for every route but the probes (`/health`, `/ready`).

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Paths answered without a key.
/// Probes stay open so orchestrators can call them without the key; they reveal no data.
const PUBLIC_PATHS: [&str; 2] = ["/health", "/ready"];

/// The caller's identity, put into request extensions for handlers.
#[derive(Debug, Clone)]
pub struct Caller {
    pub owner: String,
}

pub async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if PUBLIC_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Missing Authorization header; send Authorization: Bearer <key>",
        )
        .into_response();
    };
    let raw = value.to_str().unwrap_or_default().trim();
    let token = match raw.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => raw,
    };
    // `ct_eq` compares in constant time (and is false for different lengths).
    if !bool::from(token.as_bytes().ct_eq(state.api_key.as_bytes())) {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Invalid API key")
            .into_response();
    }
    let caller = Caller {
        owner: AppState::owner_of(token),
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}
