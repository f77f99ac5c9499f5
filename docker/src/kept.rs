//! Containers kept after their run (`persist`): counted per owner, removed with their owner's
//! cleanup, and removed once past the expiry their creator wrote into their `isol8.expires` label.

use std::time::{SystemTime, UNIX_EPOCH};

use bollard::container::RemoveContainerOptions;

use crate::engine::Engine;
use crate::error::Result;
use crate::spec::{ContainerKind, LABEL_KIND, LABEL_MANAGED, LABEL_OWNER};

/// Label on a kept container: when it may be removed, in Unix seconds.
pub const LABEL_EXPIRES: &str = "isol8.expires";

/// A kept container: its id and, when it has one, its expiry (Unix seconds).
struct Kept {
    id: String,
    expires: Option<u64>,
}

impl Engine {
    /// The containers kept for `owner` on this Docker engine, whichever server made them (a
    /// tenant's cap counts across the replicas that share an engine).
    pub async fn kept_count(&self, owner: &str) -> Result<usize> {
        Ok(self.list_kept(Some(owner)).await?.len())
    }

    /// Removes the containers kept for `owner` (part of that owner's `/cleanup`); returns how many.
    pub async fn remove_kept(&self, owner: &str) -> Result<usize> {
        let kept = self.list_kept(Some(owner)).await?;
        Ok(self.remove_all(kept.iter().map(|k| k.id.as_str())).await)
    }

    /// Removes every kept container on the engine whose expiry has passed, whichever isol8
    /// process made it (each carries its creator's limit); returns how many.
    pub async fn remove_expired_kept(&self) -> Result<usize> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let kept = self.list_kept(None).await?;
        let expired = kept
            .iter()
            .filter(|k| k.expires.is_some_and(|at| at <= now))
            .map(|k| k.id.as_str());
        Ok(self.remove_all(expired).await)
    }

    async fn list_kept(&self, owner: Option<&str>) -> Result<Vec<Kept>> {
        let mut labels = vec![
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_KIND}={}", ContainerKind::Kept.as_str()),
        ];
        if let Some(owner) = owner {
            labels.push(format!("{LABEL_OWNER}={owner}"));
        }
        let listed = self.containers_labelled(labels).await?;
        Ok(listed
            .into_iter()
            .filter_map(|c| {
                let expires = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_EXPIRES))
                    .and_then(|v| v.parse().ok());
                Some(Kept { id: c.id?, expires })
            })
            .collect())
    }

    async fn remove_all(&self, ids: impl Iterator<Item = &str>) -> usize {
        let mut removed = 0;
        for id in ids {
            let options = RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            };
            match self.docker().remove_container(id, Some(options)).await {
                Ok(()) => removed += 1,
                // Gone already, or being removed by another cleanup.
                Err(err) if matches!(crate::error::status_of(&err), Some(404 | 409)) => {}
                Err(error) => {
                    tracing::warn!(container = id, %error, "could not remove a kept container")
                }
            }
        }
        removed
    }
}
