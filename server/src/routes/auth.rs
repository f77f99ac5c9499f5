//! `POST /auth/keys`, `GET /auth/keys`, `DELETE /auth/keys/{id}`, `POST /auth/login`: database
//! keys, for the master key only (the auth layer refuses any other key first).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use isol8_api::{
    CreateKeyRequest, CreatedKey, ErrorBody, ErrorCode, KeyList, KeyQuery, LoginRequest,
    LoginResponse, RevokedKey,
};

use crate::db::{Database, DbError, NewKey};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::state::AppState;

/// The tenant of keys made without one.
const DEFAULT_TENANT: &str = "default";

/// The failures every key route can answer with.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documentation only: the answers are built by `ApiError`
enum AuthErrors {
    #[response(
        status = 400,
        description = "Invalid request, or DB-backed auth is not enabled"
    )]
    BadRequest(ErrorBody),
    #[response(status = 401, description = "No key")]
    NoKey(ErrorBody),
    #[response(status = 403, description = "Not the master key")]
    Forbidden(ErrorBody),
    #[response(status = 503, description = "The auth database is unreachable")]
    Unavailable(ErrorBody),
}

pub(crate) fn database(state: &AppState) -> Result<&Database, ApiError> {
    state.database.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "DB-backed auth is not enabled (start the server with --auth-db or auth.enabled)",
        )
    })
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Invalid(message) => ApiError::bad_request(message),
            DbError::Connect { .. } | DbError::Migrate(_) | DbError::Query(_) => {
                tracing::warn!(%error, "auth database failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::AuthUnavailable,
                    "the auth database is unreachable; retry later",
                )
            }
        }
    }
}

/// Create a key for a tenant. The key is in this answer only; the server keeps its hash.
#[utoipa::path(post, path = "/auth/keys", tag = "auth",
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "The new key, shown this once", body = CreatedKey),
        AuthErrors,
    ),
    security(("bearer" = [])))]
pub(crate) async fn create_key(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateKeyRequest>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let db = database(&state)?;
    let created = db
        .create_key(NewKey {
            name: body.name,
            tenant_id: body.tenant_id.unwrap_or_else(|| DEFAULT_TENANT.into()),
            ttl_ms: body.ttl_ms.unwrap_or(db.default_ttl_ms()),
            limits: body.limits.unwrap_or_default(),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// List keys (of one tenant with `tenantId`), newest first. Never a key or its hash.
#[utoipa::path(get, path = "/auth/keys", tag = "auth",
    params(KeyQuery),
    responses((status = 200, description = "The keys", body = KeyList), AuthErrors),
    security(("bearer" = [])))]
pub(crate) async fn list_keys(
    State(state): State<AppState>,
    Query(query): Query<KeyQuery>,
) -> Result<Json<KeyList>, ApiError> {
    let keys = database(&state)?
        .list_keys(query.tenant_id.as_deref())
        .await?;
    Ok(Json(KeyList { keys }))
}

/// Revoke a key: refused at once by every replica sharing the database.
#[utoipa::path(delete, path = "/auth/keys/{id}", tag = "auth",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 200, description = "Revoked (or already was)", body = RevokedKey),
        (status = 404, description = "No such key", body = ErrorBody),
        AuthErrors,
    ),
    security(("bearer" = [])))]
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RevokedKey>, ApiError> {
    match database(&state)?.revoke_key(&id).await? {
        true => Ok(Json(RevokedKey { ok: true, id })),
        false => Err(ApiError::not_found("Key not found")),
    }
}

/// Make a fresh key for a command line (`isol8 login`): the same as `POST /auth/keys` with a
/// generated name.
#[utoipa::path(post, path = "/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses((status = 200, description = "A fresh key, shown this once", body = LoginResponse), AuthErrors),
    security(("bearer" = [])))]
pub(crate) async fn login(
    State(state): State<AppState>,
    raw: axum::body::Bytes,
) -> Result<Json<LoginResponse>, ApiError> {
    // The body is optional (the reference's clients may send none); when sent it must be valid.
    let body: LoginRequest = match raw.iter().all(u8::is_ascii_whitespace) {
        true => LoginRequest::default(),
        false => serde_json::from_slice(&raw)
            .map_err(|e| ApiError::bad_request(format!("invalid login body: {e}")))?,
    };
    let db = database(&state)?;
    let name = body.name.unwrap_or_else(|| {
        format!(
            "login-{}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    });
    let created = db
        .create_key(NewKey {
            name,
            tenant_id: body.tenant_id.unwrap_or_else(|| DEFAULT_TENANT.into()),
            ttl_ms: body.ttl_ms.unwrap_or(db.default_ttl_ms()),
            limits: Default::default(),
        })
        .await?;
    Ok(Json(LoginResponse {
        token: created.key,
        expires_at: created.expires_at,
        key_id: created.id,
    }))
}
