//! Keys, tenants and the audit trail in a database: SQLite by default, PostgreSQL for replicas.

mod audit;
mod config;
mod keys;
mod store;

pub(crate) use audit::AuditTicket;
pub use config::{AuditConfig, AuthConfig, TenantLimitsConfig};
pub(crate) use keys::NewKey;
pub use store::{Backend, Database, DbError, SCHEMA_VERSION};
