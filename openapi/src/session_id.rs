//! `SessionId`: the one rule for a session's id, and the header that may carry it.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// The header that may carry a call's session id instead of the body's `sessionId` (so a load
/// balancer can route a session's calls to one replica).
pub const SESSION_HEADER: &str = "X-Isol8-Session";

/// A session's id: 1 to 128 ASCII letters, digits, `.`, `_`, `-` or `:`. Made only by
/// [`SessionId::parse`] (also when deserialized), so holding one means it was checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(String);

/// The refusal of a session id, naming the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSessionId(String);

impl fmt::Display for InvalidSessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sessionId {:?} is not valid: use 1 to 128 letters, digits, '.', '_', '-' or ':'",
            self.0
        )
    }
}

impl std::error::Error for InvalidSessionId {}

impl SessionId {
    /// The rule as a JSON-schema pattern (the OpenAPI spec and the MCP tools' input schemas).
    pub const PATTERN: &'static str = "^[A-Za-z0-9._:-]{1,128}$";

    /// Checks `id` against the rule.
    pub fn parse(id: impl Into<String>) -> Result<Self, InvalidSessionId> {
        let id = id.into();
        let ok = (1..=128).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
        if ok {
            Ok(SessionId(id))
        } else {
            Err(InvalidSessionId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for SessionId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SessionId {
    type Err = InvalidSessionId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionId::parse(s)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = String::deserialize(deserializer)?;
        SessionId::parse(id).map_err(serde::de::Error::custom)
    }
}

impl PartialSchema for SessionId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(Self::PATTERN))
            .into()
    }
}

impl ToSchema for SessionId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_takes_names_up_to_128_characters_and_refuses_the_rest() {
        for ok in ["a", "agent-7", "run.1:part_2", &"x".repeat(128)] {
            assert_eq!(SessionId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
            let refused = SessionId::parse(bad).unwrap_err().to_string();
            assert!(refused.starts_with("sessionId "), "{refused}");
        }
    }

    #[test]
    fn deserializing_applies_the_rule() {
        let ok: SessionId = serde_json::from_str("\"agent-7\"").unwrap();
        assert_eq!(ok.as_str(), "agent-7");
        let refused = serde_json::from_str::<SessionId>("\"a b\"").unwrap_err();
        assert!(refused.to_string().contains("is not valid"), "{refused}");
    }
}
