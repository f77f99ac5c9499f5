//! Bearer-key authentication for every route but the probes (`/health`, `/ready`): the master
//! key, the keys file's named keys and, when enabled, the database's keys; and the rule that
//! key management and the audit trail take the master key.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use isol8_api::ErrorCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;
use crate::tenants::TenantLimits;

/// Paths answered without a key.
/// Probes stay open so orchestrators can call them without the key; they reveal no data.
const PUBLIC_PATHS: [&str; 2] = ["/health", "/ready"];

/// Whether `path` answers without a key.
pub(crate) fn is_public(path: &str) -> bool {
    PUBLIC_PATHS.contains(&path)
}

/// Routes only the master key may call (403 for any other key, before the body is read).
fn master_only(path: &str) -> bool {
    path == "/audit" || path.starts_with("/audit/") || path == "/auth" || path.starts_with("/auth/")
}

/// The caller's identity, put into request extensions for handlers.
#[derive(Debug, Clone)]
pub struct Caller {
    /// What sessions and warm containers are scoped to: `tenant:<id>` for a tenant's key, else
    /// the master key's identity.
    pub owner: String,
    /// Called with the master key (`--key` / `ISOL8_API_KEY`), which may run server-wide actions.
    pub master: bool,
    /// The tenant of a keys-file or database key; `None` for the master key.
    pub tenant: Option<String>,
    /// The database key used, if one was.
    pub key_id: Option<String>,
    /// The tenant's limits for this call; `None` (unlimited) for the master key.
    pub limits: Option<TenantLimits>,
}

impl Caller {
    fn tenant(tenant: &str, key_id: Option<String>, limits: TenantLimits) -> Caller {
        Caller {
            owner: format!("tenant:{tenant}"),
            master: false,
            tenant: Some(tenant.to_string()),
            key_id,
            limits: Some(limits),
        }
    }
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

/// Finds the caller for `token`: the static keys first (in constant time), then the database.
async fn identify(state: &AppState, token: &str) -> Result<Option<Caller>, ApiError> {
    if let Some(caller) = identify_static(state, token) {
        return Ok(Some(caller));
    }
    let Some(db) = &state.database else {
        return Ok(None);
    };
    // Looked up by the key's SHA-256 (an index lookup reveals nothing useful about the key).
    match db.find_key(token).await {
        Ok(Some(key)) => Ok(Some(Caller::tenant(
            &key.tenant_id,
            Some(key.id),
            state.tenant_limits.with(&key.limits),
        ))),
        Ok(None) => Ok(None),
        Err(error) => {
            tracing::warn!(%error, "auth database lookup failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::AuthUnavailable,
                "the auth database is unreachable; retry later",
            ))
        }
    }
}

/// A key's SHA-256, what the static keys are compared as: fixed-length digests, so the comparison
/// takes the same time whatever the token's or the key's length.
pub(crate) type KeyDigest = [u8; 32];

pub(crate) fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// The master key or a keys-file key, comparing against every one in constant time.
fn identify_static(state: &AppState, token: &str) -> Option<Caller> {
    // `ct_eq` on byte strings returns early when the lengths differ, which would tell a client
    // how long the key is; the digests are 32 bytes whatever the key's length (the token's
    // hashing depends only on the token, which the client knows). Every key is compared, so
    // timing does not reveal which one matched.
    let token = digest(token);
    let mut found = None;
    if bool::from(token.ct_eq(&state.api_key_digest)) {
        found = Some(Caller {
            owner: AppState::owner_of(&state.api_key),
            master: true,
            tenant: None,
            key_id: None,
            limits: None,
        });
    }
    for (key_digest, key) in state.named_keys.iter() {
        if bool::from(token.ct_eq(key_digest)) && found.is_none() {
            found = Some(Caller::tenant(&key.tenant, None, state.tenant_limits));
        }
    }
    found
}

pub(crate) async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "Missing Authorization header; send Authorization: Bearer <key>",
        )
        .into_response();
    };
    let raw = value.to_str().unwrap_or_default().trim();
    let token = match raw.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => raw,
    };
    let caller = match identify(&state, token).await {
        Ok(Some(caller)) => caller,
        Ok(None) => {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "Invalid API key",
            )
            .into_response()
        }
        Err(error) => return error.into_response(),
    };
    if !caller.master && master_only(request.uri().path()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "Master key required for this operation",
        )
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}
