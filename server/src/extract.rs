//! Request extractors that turn every rejection into the one error body.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// `axum::Json`, but malformed JSON, wrong types, unknown and missing fields are all 400 with a
/// message naming what was wrong.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T> FromRequest<AppState> for JsonBody<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        // A body trickled in a byte at a time would otherwise hold its connection for as long as
        // the client likes.
        let limit = state.config.request_read_timeout_ms;
        let read = axum::Json::<T>::from_request(req, state);
        let Ok(read) = tokio::time::timeout(Duration::from_millis(limit), read).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {limit} ms"),
            ));
        };
        match read {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(match &rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the body as JSON with Content-Type: application/json",
                ),
                JsonRejection::BytesRejection(_)
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
                {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        rejection.body_text(),
                    )
                }
                _ => ApiError::bad_request(rejection.body_text()),
            }),
        }
    }
}
