//! The uid each sandbox runs as: its own, from a range no host user owns, so no per-uid kernel limit
//! (inotify instances, message-queue bytes, …) is shared between sandboxes or with a host user.

use std::collections::HashSet;
use std::ops::Range;

use parking_lot::Mutex;
use rand::Rng;

use crate::host::DockerHost;

/// On a plain Docker engine: above every range Linux distributions hand out (regular users stop at
/// 60000, systemd's dynamic users at 65519, its container ranges at 0x6FFFFFFF) and below 2^31,
/// which some tools still read as a signed int. 16 M uids: two sandboxes share one only by
/// chance, and only across processes (one pool never hands out a uid it still has in use).
const HOST_RANGE: Range<u32> = 0x7000_0000..0x7100_0000;
/// Under user-namespace remapping (userns-remap, rootless Docker) a container sees only the 65536
/// uids mapped to it, and each of them is a subordinate uid of the host that no host user owns.
const REMAPPED_RANGE: Range<u32> = 20_000..60_000;

/// Hands out sandbox uids. One per pool; its lock guards a set and is never held across `.await`.
#[derive(Debug, Default)]
pub(crate) struct SandboxUids {
    /// The uids of this pool's containers that may still be alive.
    in_use: Mutex<HashSet<u32>>,
}

/// Where sandbox uids come from on `host`.
pub(crate) fn uid_range(host: &DockerHost) -> Range<u32> {
    if host.remapped_users {
        REMAPPED_RANGE
    } else {
        HOST_RANGE
    }
}

/// The uid of isol8's own helper containers (filtered-mode proxies, host-address probes): one no
/// sandbox is given and no host user owns.
pub(crate) fn service_uid(host: &DockerHost) -> u32 {
    uid_range(host).start - 1
}

impl SandboxUids {
    /// A uid in `range` that no live container of this pool has; returned with
    /// [`SandboxUids::release`].
    pub(crate) fn lease(&self, range: Range<u32>) -> u32 {
        let mut in_use = self.in_use.lock();
        loop {
            let uid = rand::thread_rng().gen_range(range.clone());
            if in_use.insert(uid) {
                return uid;
            }
        }
    }

    /// Marks a uid in use that an earlier process leased (its container is adopted).
    pub(crate) fn claim(&self, uid: u32) {
        self.in_use.lock().insert(uid);
    }

    pub(crate) fn release(&self, uid: u32) {
        self.in_use.lock().remove(&uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_never_leases_a_uid_twice_while_it_is_in_use() {
        let uids = SandboxUids::default();
        let leased: HashSet<u32> = (0..100).map(|_| uids.lease(1000..1100)).collect();
        assert_eq!(leased.len(), 100);
        uids.release(1042);
        assert_eq!(uids.lease(1000..1100), 1042);
    }

    #[test]
    fn ranges_hold_no_host_user_and_leave_room_for_the_service_uid() {
        for range in [HOST_RANGE, REMAPPED_RANGE] {
            assert!(range.start > 1000 && range.start - 1 > 1000);
            assert!(range.end <= i32::MAX as u32);
            assert!(range.len() >= 40_000);
        }
        assert!(!HOST_RANGE.contains(&65534));
    }
}
