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
    /// What sessions and warm containers are scoped to: the tenant of a named key, else the
    /// master key's identity.
    pub owner: String,
    /// Called with the master key (`--key` / `ISOL8_API_KEY`), which may run server-wide actions.
    pub master: bool,
}

/// One key of the keys file: `[{"name": "ci", "key": "...", "tenant": "team-a"}]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedKey {
    pub name: String,
    pub key: String,
    pub tenant: String,
}

/// Reads the keys file (`keysFile` in the config): a JSON array of named keys with tenants.
pub fn load_keys(path: &std::path::Path) -> Result<Vec<NamedKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the keys file {}: {e}", path.display()))?;
    let keys: Vec<NamedKey> = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a valid keys file: {e}", path.display()))?;
    for key in &keys {
        if key.key.len() < 16 {
            return Err(format!(
                "key \"{}\" in {} is shorter than 16 characters",
                key.name,
                path.display()
            ));
        }
    }
    Ok(keys)
}

/// Finds the caller for `token`, comparing against every key in constant time.
fn identify(state: &AppState, token: &str) -> Option<Caller> {
    // `ct_eq` compares in constant time (and is false for different lengths); every key is compared
    // so timing does not reveal which one matched.
    let mut found = None;
    if bool::from(token.as_bytes().ct_eq(state.api_key.as_bytes())) {
        found = Some(Caller {
            owner: AppState::owner_of(token),
            master: true,
        });
    }
    for key in state.named_keys.iter() {
        if bool::from(token.as_bytes().ct_eq(key.key.as_bytes())) && found.is_none() {
            found = Some(Caller {
                owner: format!("tenant:{}", key.tenant),
                master: false,
            });
        }
    }
    found
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
    let Some(caller) = identify(&state, token) else {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Invalid API key")
            .into_response();
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}
