//! The system calls std does not wrap, each behind a safe function: the crate's only unsafe code.
//! Every function here is a thin wrapper whose safety argument fits in its comment.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Undumpable, the agent's /proc files (its environment, its memory) are root's, out of the
/// programs' reach (they run as the same uid) and no program can ptrace it.
pub(crate) fn set_dumpable(dumpable: bool) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE) takes integers only.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_DUMPABLE,
            libc::c_ulong::from(dumpable),
            0,
            0,
            0,
        )
    })
    .map(drop)
}

/// Sends `signal` to `pid` (a process), `-pid` (its group) or -1 (every process the agent may
/// signal: as PID 1 of the container's namespace, all of them).
pub(crate) fn kill(pid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes integers only.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// One exited child, reaped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reaped {
    pub(crate) pid: i32,
    /// The wait status (see `exit_code`).
    pub(crate) status: i32,
    /// The largest resident set the process ever had, in bytes.
    pub(crate) max_rss: u64,
}

/// Collects one exited child without blocking (None when none has exited, or there are none).
pub(crate) fn reap_one() -> Option<Reaped> {
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value, and wait4 only writes to the two pointers,
        // which point to live locals.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
        if pid > 0 {
            return Some(Reaped {
                pid,
                status,
                max_rss: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
            });
        }
        if pid < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// Waits for the child `pid` to end and reaps it (after a SIGKILL: at once).
pub(crate) fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid only writes to the live local.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
}

/// CPU time (user + system) of this process so far, in nanoseconds.
pub(crate) fn own_cpu_ns() -> u64 {
    // SAFETY: as in `reap_one`; getrusage only writes to the live local.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let ns = |t: libc::timeval| {
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_usec).unwrap_or(0) * 1000
    };
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// Whether `fd` blocks on reads and writes.
pub(crate) fn set_blocking(fd: BorrowedFd<'_>, blocking: bool) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor the borrow keeps open, with integer arguments.
    let flags = check(unsafe { libc::fcntl(raw, libc::F_GETFL) })?;
    let flags = if blocking {
        flags & !libc::O_NONBLOCK
    } else {
        flags | libc::O_NONBLOCK
    };
    check(unsafe { libc::fcntl(raw, libc::F_SETFL, flags) }).map(drop)
}

/// How many bytes a socket must hold before it reports itself readable (`SO_RCVLOWAT`). For TCP,
/// the end of the stream and a nearly closed receive window still wake the reader, and lowering
/// it wakes a reader at once when enough is already there.
pub(crate) fn set_receive_low_water(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a descriptor the borrow keeps open, reading one c_int it is given
    // the size of.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_ref(&bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// What `poll` reports for one descriptor.
pub(crate) const READABLE: i16 = libc::POLLIN;
pub(crate) const WRITABLE: i16 = libc::POLLOUT;

/// Waits until one of `fds` (descriptor, events) is ready or `timeout` passes; returns the events
/// of each, in order (hang-up and error count as ready). A signal ends the wait early.
pub(crate) fn poll(fds: &[(RawFd, i16)], timeout: Option<Duration>) -> Vec<i16> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    let millis = timeout.map_or(-1, |t| {
        // Rounded up: a deadline 0.4 ms away must not spin.
        libc::c_int::try_from(t.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: the pointer and length describe the live, initialised vector.
    let ready = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, millis) };
    if ready <= 0 {
        return vec![0; fds.len()];
    }
    polled.into_iter().map(|p| p.revents).collect()
}

/// The write end of the self-pipe the signal handler wakes the main loop with.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn wake(_signal: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write is async-signal-safe; the byte is a static. A full pipe means a wake-up
        // is pending already, so the result does not matter; errno is put back, so the code the
        // signal interrupted reads its own.
        unsafe {
            let errno = libc::__errno_location();
            let saved = *errno;
            libc::write(fd, b"!".as_ptr().cast(), 1);
            *errno = saved;
        }
    }
}

/// Makes each of `signals` write a byte to `wake_fd` (a non-blocking pipe the main loop polls),
/// and nothing else: SIGCHLD wakes the loop to reap, SIGTERM and SIGINT from a program do nothing
/// to the agent. Handlers, unlike ignored dispositions, are reset by exec, so programs start with
/// the defaults.
pub(crate) fn wake_on(signals: &[libc::c_int], wake_fd: RawFd) -> io::Result<()> {
    WAKE_FD.store(wake_fd, Ordering::Relaxed);
    for &signal in signals {
        // SAFETY: a zeroed sigaction is valid; the handler is an extern "C" fn that only calls
        // write(2); sigaction copies the struct.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = wake as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
        check(unsafe { libc::sigemptyset(&mut action.sa_mask) })?;
        check(unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) })?;
    }
    Ok(())
}

const LIFT_FD: libc::c_int = 128;

/// Prepares `command` to start as a program of the sandbox: in its own session (so a kill of its
/// process group reaches what it starts), dumpable again (the agent is not, and an undumpable
/// process's /proc files are root's, even to itself), first in line for the OOM killer (files
/// in the tmpfs dirs count toward the memory limit: when it is reached the program must die,
/// never the agent), and with `placed` descriptors (source, number in the child) at their numbers.
/// Every other descriptor of the agent is close-on-exec, so the program gets its stdio and these.
pub(crate) fn prepare_program(command: &mut Command, placed: Vec<(RawFd, RawFd)>) {
    // The lifted copies live in a fixed array: the child may not allocate.
    assert!(placed.len() <= 8, "at most 8 placed descriptors");
    let hook = move || -> io::Result<()> {
        // SAFETY (all of this closure): it runs in the forked child before exec, so it only makes
        // async-signal-safe system calls on integers, the static path, the captured vector (read
        // only, allocated before the fork) and a stack array.
        unsafe {
            check(libc::setsid())?;
            // Lift every source above the target range first, so no dup2 clobbers one still needed.
            let mut lifted = [0 as RawFd; 8];
            for (slot, &(source, _)) in lifted.iter_mut().zip(&placed) {
                *slot = check(libc::fcntl(source, libc::F_DUPFD_CLOEXEC, LIFT_FD))?;
            }
            for (&from, &(_, target)) in lifted.iter().zip(&placed) {
                check(libc::dup2(from, target))?;
            }
            // Best effort: a runtime that refuses it (some OCI runtimes) still runs the program.
            libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
            let path: &CStr = c"/proc/self/oom_score_adj";
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"1000".as_ptr().cast(), 4);
                libc::close(fd);
            }
        }
        Ok(())
    };
    // SAFETY: the hook is async-signal-safe (see above).
    unsafe { command.pre_exec(hook) };
}

/// The SysV IPC tables of `/proc/sysvipc`, and how to remove one object of each by id.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SysvTable {
    Shm,
    Sem,
    Msg,
}

impl SysvTable {
    pub(crate) const ALL: [SysvTable; 3] = [SysvTable::Shm, SysvTable::Sem, SysvTable::Msg];

    pub(crate) fn name(self) -> &'static str {
        match self {
            SysvTable::Shm => "shm",
            SysvTable::Sem => "sem",
            SysvTable::Msg => "msg",
        }
    }

    /// Removes object `id` (best effort: one removed meanwhile is simply gone).
    pub(crate) fn remove(self, id: i32) {
        // SAFETY: IPC_RMID reads no buffer; the null pointers are allowed for it.
        unsafe {
            match self {
                SysvTable::Shm => libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()),
                SysvTable::Sem => libc::semctl(id, 0, libc::IPC_RMID),
                SysvTable::Msg => libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut()),
            }
        };
    }
}
