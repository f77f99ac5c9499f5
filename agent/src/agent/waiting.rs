//! A pre-started interpreter: started with the command line, working directory and start
//! environment of a default run of its runtime (the `Template`, from the engine) before that run
//! exists, so a run costs no interpreter start. It waits in its loader (PRESTART_DIR; bash's is
//! BASH_LOADER) for the run's working directory and environment on the handoff pipe, applies them
//! and then runs the program file of its command line as the runtime's own start does.
//!
//! It is started only at container start and after a reset found the sandbox clean, holds no
//! descriptor but its stdio, display and handoff pipes, and serves one run: that run, or any
//! other request, takes it or kills it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use super::proto::Template;
use super::spawn::{pipe, spawn, Spawned, HANDOFF_FD};
use super::{program_env, DisplayPipes};
use crate::sys;

/// Where the runtimes' loaders live (in isol8's python and node images).
const PRESTART_DIR: &str = "/opt/isol8/prestart";
/// bash's loader, in the agent volume: bash sources it as BASH_ENV.
const BASH_LOADER: &str = "/opt/isol8/agent/prestart/bash.sh";
/// How long a handoff may take before the run starts the normal way.
const HANDOFF_WITHIN: Duration = Duration::from_secs(2);
/// A run whose command line and environment are larger starts the normal way, so execve decides
/// what it decides for any program ("Argument list too long" past its limits, far above this).
const MAX_HANDOFF_ARGS: usize = 65536;

/// Variables an interpreter (or the C library under it) reads while it starts, before its loader
/// gets the run's environment: a run whose value differs from the waiting interpreter's starts
/// the normal way. Prefixes end with "_" or are whole names' starts; anything doubtful is listed.
const LIBC_START: &[&str] = &[
    "LD_",
    "MALLOC_",
    "GLIBC_TUNABLES",
    "LC_",
    "LANG",
    "LANGUAGE",
    "LOCPATH",
    "GCONV_PATH",
    "TZ",
    "TZDIR",
    "PATH",
    "HOME",
    "TERM",
];
const PYTHON_START: &[&str] = &["PYTHON", "__PYVENV_LAUNCHER__"];
/// What bash reads of its environment while it starts (options, imported functions, the
/// variables it derives or keeps for itself) besides what any program's C library reads. The
/// loader keeps SHLVL, PWD and OLDPWD as bash made them, which is right only when the run's
/// values are the start's.
const BASH_START: &[&str] = &[
    "BASH",
    "SHELLOPTS",
    "POSIXLY_CORRECT",
    "SHLVL",
    "PWD",
    "OLDPWD",
    "IFS",
    "PS4",
    "ENV",
    "HIST",
    "COMP_",
    "UID",
    "EUID",
    "PPID",
    "GROUPS",
    "RANDOM",
    "SRANDOM",
    "SECONDS",
    "LINENO",
    "EPOCH",
    "FUNCNAME",
    "FUNCNEST",
    "DIRSTACK",
    "OPT",
    "GLOBIGNORE",
    "EXECIGNORE",
    "CHILD_MAX",
    "TMOUT",
    "MAIL",
    "INPUTRC",
    "IGNOREEOF",
];
const NODE_START: &[&str] = &[
    "NODE_",
    "UV_",
    "OPENSSL_",
    "SSL_",
    "ICU_",
    "FORCE_COLOR",
    "NO_COLOR",
    "COLORTERM",
];

/// The variables that make an interpreter of `runtime` load its run from the handoff pipe
/// (the loader takes them away again with the rest of the start environment), and the prefixes
/// of those it reads at start; None for a runtime without a loader.
fn hooks(runtime: &str) -> Option<(BTreeMap<String, String>, &'static [&'static str])> {
    let fd = ("ISOL8_PRESTART_FD".to_string(), HANDOFF_FD.to_string());
    match runtime {
        // site runs 00-isol8-prestart.pth (the python image puts it in site-packages) at start.
        "python" => Some((BTreeMap::from([fd]), PYTHON_START)),
        "node" => Some((
            BTreeMap::from([
                fd,
                (
                    "NODE_OPTIONS".to_string(),
                    format!("--require {PRESTART_DIR}/node.cjs"),
                ),
            ]),
            NODE_START,
        )),
        // bash sources BASH_ENV before it reads its script.
        "bash" => Some((
            BTreeMap::from([fd, ("BASH_ENV".to_string(), BASH_LOADER.to_string())]),
            BASH_START,
        )),
        _ => None,
    }
}

/// The pipes of a program the agent reads and writes, once it runs.
#[derive(Debug)]
pub(crate) struct Handed {
    pub(crate) pid: i32,
    pub(crate) stdin: File,
    pub(crate) stdout: File,
    pub(crate) stderr: File,
    pub(crate) display: Option<DisplayPipes>,
}

#[derive(Debug)]
pub(crate) struct Waiting {
    template: Template,
    start_env: BTreeMap<String, String>,
    hook_vars: BTreeMap<String, String>,
    /// The prefixes of the runtime's own start variables (LIBC_START's come with every runtime).
    start_prefixes: &'static [&'static str],
    /// None once killed.
    pub(crate) pid: Option<i32>,
    pipes: Option<(Spawned, Option<DisplayPipes>, File)>,
}

impl Waiting {
    pub(crate) fn start(template: Template) -> io::Result<Waiting> {
        let (hook_vars, runtime_prefixes) = hooks(&template.runtime).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!("no loader for runtime {:?}", template.runtime),
            )
        })?;
        let mut env = template.env.clone();
        env.extend(hook_vars.clone());
        let start_env = program_env(&env, template.display);
        let (display, extra) = DisplayPipes::open(template.display)?;
        let (handoff_r, handoff_w) = pipe()?;
        let spawned = spawn(
            &template.argv,
            &start_env,
            &template.cwd,
            extra,
            Some(handoff_r),
        )?;
        Ok(Waiting {
            pid: Some(spawned.pid),
            template,
            start_env,
            hook_vars,
            start_prefixes: runtime_prefixes,
            pipes: Some((spawned, display, handoff_w)),
        })
    }

    /// Whether a run of `argv` in `cwd` with `env` would start its interpreter exactly as this
    /// one started: the same command line, working directory and display channel, and the same
    /// value of every variable read at start (the loader sets the others).
    pub(crate) fn fits(
        &self,
        argv: &[String],
        cwd: &str,
        env: &BTreeMap<String, String>,
        display: bool,
    ) -> bool {
        if argv != self.template.argv.as_slice()
            || cwd != self.template.cwd
            || display != self.template.display
        {
            return false;
        }
        if self.hook_vars.keys().any(|name| env.contains_key(name)) {
            return false;
        }
        // A NUL cannot be handed over (nor exec'd: the normal start reports it), and bash's
        // loader can export only names bash can assign: such runs start the normal way.
        let bash = self.template.runtime == "bash";
        let unfit_name = |name: &str| bash && !is_shell_name(name);
        if env
            .iter()
            .any(|(k, v)| k.contains('\0') || v.contains('\0') || unfit_name(k))
        {
            return false;
        }
        let size: usize = argv.iter().map(|a| a.len() + 1).sum::<usize>()
            + env
                .iter()
                .map(|(k, v)| k.len() + v.len() + 2)
                .sum::<usize>();
        if size > MAX_HANDOFF_ARGS {
            return false;
        }
        let read_at_start = |name: &str| {
            !self.hook_vars.contains_key(name)
                && LIBC_START
                    .iter()
                    .chain(self.start_prefixes)
                    .any(|p| name.starts_with(p))
        };
        let differs = env
            .keys()
            .chain(self.start_env.keys())
            .any(|name| read_at_start(name) && env.get(name) != self.start_env.get(name));
        if differs {
            return false;
        }
        // Python's user site (HOME/.local) is looked for at start, before the loader: files of
        // the run that make one need a normal start.
        let home = env.get("HOME").map_or("/", String::as_str);
        !(self.template.runtime == "python"
            && Path::new(home).join(".local").symlink_metadata().is_ok())
    }

    /// Sends the run to the interpreter: its pipes, now the run's, or None when it would not take
    /// the run in time (it is then killed, having run nothing).
    pub(crate) fn hand_over(mut self, cwd: &str, env: &BTreeMap<String, String>) -> Option<Handed> {
        let (spawned, display, mut handoff) = self.pipes.take()?;
        let data = match self.template.runtime.as_str() {
            "bash" => bash_handoff(env),
            _ => loader_handoff(cwd, env),
        };
        if write_within(&mut handoff, &data, HANDOFF_WITHIN).is_err() {
            self.pipes = Some((spawned, display, handoff));
            self.kill();
            return None;
        }
        drop(handoff);
        self.pid = None; // the run's now: not killed with `self`
        Some(Handed {
            pid: spawned.pid,
            stdin: spawned.stdin,
            stdout: spawned.stdout,
            stderr: spawned.stderr,
            display,
        })
    }

    /// Kills the interpreter (it ran nothing but its loader) and reaps it here, so its resident
    /// set is never counted as the next run's.
    pub(crate) fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = sys::kill(-pid, libc::SIGKILL);
            sys::reap(pid);
        }
        self.pipes = None;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The run for the python and node loaders: `cwd\0NAME=value\0…`.
fn loader_handoff(cwd: &str, env: &BTreeMap<String, String>) -> Vec<u8> {
    let mut data = cwd.as_bytes().to_vec();
    for (name, value) in env {
        data.push(0);
        data.extend_from_slice(name.as_bytes());
        data.push(b'=');
        data.extend_from_slice(value.as_bytes());
    }
    data
}

/// The run for bash's loader, which sources it: the run's variables exported (single quotes keep
/// every byte as it is), the handoff pipe closed and SECONDS counting from now. Names are shell
/// names (`fits`).
fn bash_handoff(env: &BTreeMap<String, String>) -> Vec<u8> {
    let quoted = |text: &str| format!("'{}'", text.replace('\'', r"'\''"));
    let mut script = String::new();
    for (name, value) in env {
        script.push_str(&format!("export {}\n", quoted(&format!("{name}={value}"))));
    }
    script.push_str(&format!("exec {HANDOFF_FD}<&-\nSECONDS=0\n"));
    script.into_bytes()
}

/// A name bash can assign: a letter or `_`, then letters, digits and `_`.
fn is_shell_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Writes all of `data` to the pipe `file`, giving up after `within`.
fn write_within(file: &mut File, data: &[u8], within: Duration) -> io::Result<()> {
    let deadline = Instant::now() + within;
    sys::set_blocking(file.as_fd(), false)?;
    let mut rest = data;
    while !rest.is_empty() {
        match file.write(rest) {
            Ok(n) => rest = &rest[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero()
                    || sys::poll(&[(file.as_raw_fd(), sys::WRITABLE)], Some(left))[0] == 0
                {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bash_handoff_exports_every_byte_of_the_values_as_they_are() {
        let env = BTreeMap::from([
            ("A".to_string(), "it's $HOME `x` \\\n\"q\"".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]);
        let script = String::from_utf8(bash_handoff(&env)).unwrap();
        assert_eq!(
            script,
            "export 'A=it'\\''s $HOME `x` \\\n\"q\"'\nexport 'EMPTY='\nexec 99<&-\nSECONDS=0\n"
        );
        let out = std::process::Command::new("bash")
            .args([
                "-c",
                &format!("{script}\nprintf '%s|' \"$A\" \"$EMPTY\" \"$SECONDS\""),
                "bash",
            ])
            .env_clear()
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "it's $HOME `x` \\\n\"q\"||0|"
        );
    }

    #[test]
    fn shell_names_are_what_bash_can_assign() {
        for name in ["A", "_x", "PATH", "a1_B"] {
            assert!(is_shell_name(name), "{name}");
        }
        for name in ["", "1A", "A-B", "A.B", "A B", "é"] {
            assert!(!is_shell_name(name), "{name}");
        }
    }
}
