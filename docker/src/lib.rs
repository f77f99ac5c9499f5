//! isol8-docker: the sandbox engine on the Docker Engine API.
//!
//! # Layout
//!
//! - A request becomes a run: `plan` (the one validation pass: `RunPlan`, with `limits`), then
//!   `engine` (`Engine`: connect, run, stream) with `engine/resolve` (which image),
//!   `engine/drive` (one run, start to result) and `engine/cleanup` (listing, cleanup, the orphan
//!   janitor). `run` is the caller's handle on a run in progress; `output` masks and decodes it.
//! - Containers: `spec` (the hardened container), `uids` (each sandbox's own uid), `host` (what
//!   the Docker host is), `pool` (warm sandboxes and their reset), `agent` (one container and the
//!   protocol to its agent), `agent_volume` (the agent's files, mounted into every container),
//!   `network` (filtered mode's network and proxy), `session` (sessions' containers), `kept` (`persist`), `archive` (workspace snapshots), `ids` (short ids).
//! - Images: `images` (runtime images, bootstrapped), `custom` (images with packages),
//!   `image_policy` (which other images a request may name), `build_output` (build logs a
//!   person can read).
//! - `error`: the crate's one error type.

mod agent;
mod agent_volume;
mod archive;
mod build_output;
mod custom;
mod engine;
mod error;
mod host;
mod ids;
mod image_policy;
mod images;
mod kept;
mod limits;
mod network;
mod output;
mod plan;
mod pool;
mod run;
mod session;
mod spec;
mod uids;

#[doc(hidden)]
pub use agent_volume::fill_volume_named as fill_agent_volume_named;
pub use agent_volume::{
    volume_name as agent_volume_name, AGENT_BIN, AGENT_DIR, DISPLAY_DIR, KERNEL_DIR,
};
pub use archive::sanitize_archive;
pub use custom::{default_custom_tag, CustomImage, PackageSet, LABEL_BASE, LABEL_PACKAGES};
pub use engine::{
    CleanupScope, Engine, EngineConfig, Managed, ManagedContainer, ManagedImage, RunEvent,
};
pub use error::{Error, Result};
pub use ids::short_id;
pub use image_policy::ImagePolicy;
pub use images::{
    BuildProgress, ImageBuilder, ImageConfig, EXTRA_CA_ENV, HOST_CA_BUNDLES, HOST_CA_ENV,
    LABEL_RECIPE,
};
pub use kept::LABEL_EXPIRES;
pub use limits::{format_size, parse_size, LimitFields, Limits};
pub use output::OutputFilter;
pub use plan::{check_host_pattern, confine, PlanDefaults, Program, RunPlan};
pub use pool::{PoolConfig, PoolStats};
pub use run::{RunControl, RunEvents, RunSignal};
pub use session::{
    LocalSession, ServerSession, SessionKey, SessionSandbox, SessionSlot, SessionState,
};
pub use spec::{
    socket_buffer_caps, ContainerSpec, LABEL_INSTANCE, LABEL_KIND, LABEL_MANAGED, LABEL_RUNTIME,
    LABEL_SERVER,
};
