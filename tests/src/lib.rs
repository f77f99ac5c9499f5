//! isol8-e2e: home of the cross-crate end-to-end suites (ingress, load, faults). The engine, server
//! and CLI tests live beside their crates today (`docker/tests`, `server/tests`, `client/tests`).
