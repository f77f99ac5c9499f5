//! The OpenAPI document: utoipa's, generated from the routes `app` serves, plus what its
//! attributes cannot state.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::OpenApi;

use crate::app::api_router;

#[derive(OpenApi)]
#[openapi(
    info(title = "isol8", description = "Run untrusted code in locked-down sandboxes"),
    modifiers(&BearerAuth),
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document of the routes `app` serves, with the rules utoipa's attributes cannot state.
pub fn openapi() -> serde_json::Value {
    let (_, mut api) = api_router().split_for_parts();
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut doc = serde_json::to_value(api).expect("the OpenAPI document serializes");
    refine_openapi(&mut doc);
    doc
}

/// Adds what the derive cannot say: exactly one of `code`/`cmd`/`codeUrl`, variable-name rules, the shape of
/// an SSE event (an `event` name and JSON `data`, as OpenAPI 3.1 tools read event streams), and the
/// 413/415 answers every JSON body can get.
fn refine_openapi(doc: &mut serde_json::Value) {
    use serde_json::json;
    let env_names = json!({"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"});
    let schemas = &mut doc["components"]["schemas"];
    // Exactly one of code, cmd and codeUrl, as a string (an explicit null counts as absent).
    schemas["ExecutionRequest"]["oneOf"] = json!([
        {"required": ["code"], "properties": {"code": {"type": "string"}}},
        {"required": ["cmd"], "properties": {"cmd": {"type": "string"}}},
        {"required": ["codeUrl"], "properties": {"codeUrl": {"type": "string"}}}
    ]);
    let env_values = json!({"type": "string", "pattern": "^[^\\u0000]*$"});
    schemas["ExecutionRequest"]["properties"]["files"]["propertyNames"] =
        json!({"pattern": "^[^\\u0000]*\\S[^\\u0000]*$"});
    for (schema, field) in [("ExecutionRequest", "env"), ("ExecutionOptions", "secrets")] {
        let map = &mut schemas[schema]["properties"][field];
        map["propertyNames"] = env_names.clone();
        map["additionalProperties"] = env_values.clone();
    }
    let sse_frame = json!({
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"$ref": "#/components/schemas/StreamEventType"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": "#/components/schemas/StreamEvent"}
            }
        }
    });
    let error = |description: &str| {
        json!({"description": description,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
    };
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for operation in paths
        .values_mut()
        .filter_map(|p| p.as_object_mut())
        .flat_map(|p| p.values_mut())
    {
        if let Some(stream) = operation.pointer_mut("/responses/200/content/text~1event-stream") {
            stream["schema"] = sse_frame.clone();
        }
        if operation.get("requestBody").is_some() {
            let responses = &mut operation["responses"];
            for (status, description) in [
                ("408", "Body not sent within requestReadTimeoutMs"),
                ("413", "Body too large"),
                ("415", "Body is not JSON"),
            ] {
                if responses.get(status).is_none() {
                    responses[status] = error(description);
                }
            }
        }
    }
}
