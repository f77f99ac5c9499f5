//! Pre-started interpreters on the real Docker engine: the same program gives the same stdout,
//! stderr, exit code, traceback and results with and without one; runs that need another start
//! take the normal one (and what they set takes effect); nothing of one run reaches the next.
//! The runtime images must be built first (`isol8 setup`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use isol8_api::{ExecutionOptions, ExecutionRequest, ExecutionResult, Runtime};
use isol8_docker::{
    Engine, EngineConfig, PlanDefaults, PoolConfig, RunControl, RunEvent, RunPlan, RunSignal,
};

/// An engine without fresh warm containers: its one container for the test's runs is made by the
/// first run and, after each reset, waits in the owner's bucket (with a pre-started interpreter
/// when `prestart` is on).
async fn engine(prestart: bool) -> Engine {
    Engine::connect(EngineConfig {
        pool: PoolConfig {
            size: 0,
            prestart,
            ..PoolConfig::default()
        },
        warm_runtimes: vec![],
        ..EngineConfig::default()
    })
    .await
    .expect("Docker must be running for these tests")
}

fn code(runtime: Runtime, source: &str) -> ExecutionRequest {
    ExecutionRequest {
        runtime,
        code: Some(source.to_string()),
        ..Default::default()
    }
}

/// Runs `request`, then waits until its container is back in the pool (reset, and its next
/// interpreter pre-started), so the next run of the test finds it. Returns the result and whether
/// the program ran in a pre-started interpreter.
async fn run(engine: &Engine, request: &ExecutionRequest) -> (ExecutionResult, bool) {
    let before = engine.pool_stats().prestarted_runs;
    let plan = RunPlan::from_request(
        request,
        &ExecutionOptions::default(),
        &PlanDefaults::default(),
        "test-owner",
    )
    .expect("valid plan");
    let result = engine.execute(plan).await.expect("run");
    let prestarted = engine.pool_stats().prestarted_runs > before;
    let deadline = Instant::now() + Duration::from_secs(15);
    while engine.pool_stats().ready == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (result, prestarted)
}

/// What a program shows of itself: everything but the clock (and the container id).
fn shown(result: &ExecutionResult) -> (String, String, i64, String, String) {
    (
        result.stdout.clone(),
        result.stderr.clone(),
        result.exit_code,
        format!("{:?}", result.status),
        format!("{:?}", result.results),
    )
}

struct Case {
    name: &'static str,
    request: ExecutionRequest,
    /// Whether the pre-starting engine must run it in a pre-started interpreter.
    prestarted: bool,
}

fn case(name: &'static str, runtime: Runtime, source: &str) -> Case {
    Case {
        name,
        request: code(runtime, source),
        prestarted: true,
    }
}

fn fallback(name: &'static str, request: ExecutionRequest) -> Case {
    Case {
        name,
        request,
        prestarted: false,
    }
}

fn with(
    mut request: ExecutionRequest,
    edit: impl FnOnce(&mut ExecutionRequest),
) -> ExecutionRequest {
    edit(&mut request);
    request
}

/// Runs every case on an engine that pre-starts and on one that does not, one runtime's
/// container each, and compares what the program showed.
async fn compare(runtime: Runtime, cases: Vec<Case>) {
    let (pre, normal) = (engine(true).await, engine(false).await);
    // The first run of each engine makes its container; later ones find it reset.
    let warm_up = ExecutionRequest {
        runtime,
        cmd: Some("true".into()),
        ..Default::default()
    };
    run(&pre, &warm_up).await;
    run(&normal, &warm_up).await;
    let mut failures = Vec::new();
    for case in &cases {
        let (with_prestart, prestarted) = run(&pre, &case.request).await;
        let (without, normal_prestarted) = run(&normal, &case.request).await;
        if std::env::var_os("ISOL8_TEST_SHOW").is_some() {
            eprintln!(
                "== {} (pre-started: {prestarted})\n{}{}-> {}",
                case.name, with_prestart.stdout, with_prestart.stderr, with_prestart.exit_code
            );
        }
        assert!(!normal_prestarted, "{}: prestart is off", case.name);
        if prestarted != case.prestarted {
            failures.push(format!(
                "{}: ran in a pre-started interpreter: {prestarted}, expected {}",
                case.name, case.prestarted
            ));
        }
        if without.stdout.is_empty() && without.stderr.is_empty() {
            failures.push(format!("{}: showed nothing: {without:?}", case.name));
        }
        if shown(&with_prestart) != shown(&without) {
            failures.push(format!(
                "{}: differs\n  pre-started: {:?}\n  normal:      {:?}",
                case.name,
                shown(&with_prestart),
                shown(&without)
            ));
        }
    }
    pre.shutdown().await;
    normal.shutdown().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn python_programs_run_the_same_in_a_prestarted_interpreter() {
    let py = Runtime::Python;
    let helper = |r: &mut ExecutionRequest| {
        r.files = BTreeMap::from([
            ("helper.py".into(), "X = 41\n".into()),
            ("pkg/__init__.py".into(), "".into()),
            (
                "pkg/mod.py".into(),
                "from . import sib\nY = sib.Z + 1\n".into(),
            ),
            ("pkg/sib.py".into(), "Z = 1\n".into()),
        ])
    };
    let cases = vec![
        case(
            "argv, __file__, sys.path, modules, flags",
            py,
            "import sys, os\nprint(sys.argv, sys.orig_argv, __file__, __name__, sys.path)\n\
             print(sorted(sys.modules))\nprint(sys.flags, sys.executable)\n\
             print(open('/proc/self/cmdline', 'rb').read())\nprint(sorted(os.listdir('/proc/self/fd')))\n\
             print(sorted(sys.path_importer_cache))",
        ),
        case(
            "__main__ and its globals",
            py,
            "if __name__ == '__main__':\n    print('main', __spec__, __cached__, __package__, __doc__)\n\
             print(type(__loader__).__name__, __loader__.name, __loader__.path, sorted(globals()))\n\
             import sys; print(sys.modules['__main__'].__dict__ is globals(), sys._getframe().f_back)",
        ),
        Case {
            name: "imports from /sandbox, absolute and relative",
            request: with(
                code(py, "import helper, pkg.mod\nprint(helper.X + 1, pkg.mod.Y)"),
                helper,
            ),
            prestarted: true,
        },
        Case {
            name: "input() with stdin",
            request: with(
                code(py, "name = input('name? ')\nprint('hi', name)\nprint(input())"),
                |r| r.stdin = Some("alice\nbob\n".into()),
            ),
            prestarted: true,
        },
        Case {
            name: "the run's environment and working directory",
            request: with(
                code(
                    py,
                    "import os\nprint(os.environ['GREETING'], os.getcwd(), os.environ.get('ISOL8_PRESTART_FD'))\n\
                     print(sorted(os.environ.items()))\nimport subprocess\n\
                     print(subprocess.run(['sh', '-c', 'echo $GREETING; env | sort'], capture_output=True, text=True).stdout)",
                ),
                |r| r.env = BTreeMap::from([("GREETING".into(), "hello there".into())]),
            ),
            prestarted: true,
        },
        case("sys.exit(3)", py, "print('out')\nimport sys\nsys.exit(3)"),
        case("sys.exit with a message", py, "import sys\nsys.exit('bye')"),
        case(
            "an uncaught exception",
            py,
            "def inner():\n    return 1 / 0\n\ndef outer():\n    inner()\n\nprint('before')\nouter()",
        ),
        case(
            "a chained exception",
            py,
            "try:\n    {}['k']\nexcept KeyError as e:\n    raise ValueError('bad') from e",
        ),
        case("a syntax error", py, "print('never')\nprint(\n"),
        case("an indentation error", py, "if True:\nprint(1)\n"),
        case(
            "a signal",
            py,
            "import os, signal\nprint('going', flush=True)\nos.kill(os.getpid(), signal.SIGTERM)",
        ),
        case(
            "KeyboardInterrupt",
            py,
            "import atexit\natexit.register(print, 'atexit ran')\nraise KeyboardInterrupt",
        ),
        case(
            "atexit handlers and threads at exit",
            py,
            "import atexit, threading, time\natexit.register(lambda: print('bye'))\n\
             threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()\nprint('main')",
        ),
        case(
            "unbuffered stdout and stderr interleave",
            py,
            "import sys\nfor i in range(3):\n    print('out', i)\n    print('err', i, file=sys.stderr)",
        ),
        case(
            "a display result",
            py,
            "import isol8_display, os\nprint('before', os.environ['MPLBACKEND'])\n\
             isol8_display.display({'a': [1, 2]})\nprint('after')",
        ),
        case(
            "hash randomization and a source encoding",
            py,
            "# -*- coding: utf-8 -*-\nimport sys\nprint(sys.flags.hash_randomization, 'é', sys.stdout.encoding)",
        ),
        fallback(
            "PYTHONHASHSEED takes effect",
            with(code(py, "print(hash('isol8'), hash(b'x'))"), |r| {
                r.env = BTreeMap::from([("PYTHONHASHSEED".into(), "7".into())])
            }),
        ),
        fallback(
            "PYTHONPATH takes effect",
            with(
                code(py, "import sys, found\nprint(found.V, sys.path[:3])"),
                |r| {
                    r.env = BTreeMap::from([("PYTHONPATH".into(), "/sandbox/lib".into())]);
                    r.files = BTreeMap::from([("lib/found.py".into(), "V = 'found'\n".into())]);
                },
            ),
        ),
        fallback(
            "a user site made by the run's files",
            with(
                code(py, "import site_mod, sys\nprint(site_mod.V, [p for p in sys.path if '.local' in p])"),
                |r| {
                    r.files = BTreeMap::from([(
                        ".local/lib/python3.11/site-packages/site_mod.py".into(),
                        "V = 'user site'\n".into(),
                    )])
                },
            ),
        ),
        fallback(
            "a setup script",
            with(code(py, "import os\nprint(open('made').read(), os.getcwd())"), |r| {
                r.setup_script = Some("echo made > made".into())
            }),
        ),
        fallback(
            "another working directory",
            with(code(py, "import os, sys\nprint(os.getcwd(), sys.path[0], __file__)"), |r| {
                r.workdir = Some("/sandbox/sub".into())
            }),
        ),
        fallback(
            "an environment too large for execve",
            with(code(py, "print('never')"), |r| {
                r.env = BTreeMap::from([("HUGE".into(), "x".repeat(200 * 1024))])
            }),
        ),
        fallback(
            "a shell command",
            ExecutionRequest {
                runtime: py,
                cmd: Some("python3 -c 'import sys; print(sys.argv)'".into()),
                ..Default::default()
            },
        ),
    ];
    compare(py, cases).await;
}

#[tokio::test]
async fn node_programs_run_the_same_in_a_prestarted_interpreter() {
    let node = Runtime::Node;
    let cases = vec![
        case(
            "argv, main module, loaded modules",
            node,
            "import { createRequire } from 'node:module';\nimport Module from 'node:module';\n\
             const require = createRequire(import.meta.url);\n\
             console.log(process.argv, process.execArgv, process.argv0, import.meta.main, import.meta.filename);\n\
             console.log(process.moduleLoadList.length, Object.keys(require.cache), Object.keys(Module._pathCache));\n\
             console.log(require.main, process.mainModule, process.cwd(), require('fs').readdirSync('/proc/self/fd'));\n\
             console.log(require('fs').readFileSync('/proc/self/cmdline', 'latin1'));",
        ),
        Case {
            name: "the run's environment and stdin",
            request: with(
                code(
                    node,
                    "import fs from 'node:fs';\nconsole.log(process.env.GREETING, process.env.NODE_OPTIONS, process.env.ISOL8_PRESTART_FD);\n\
                     console.log(JSON.stringify(Object.entries(process.env).sort()));\n\
                     console.log(fs.readFileSync(0, 'utf8').toUpperCase());\n\
                     import { execSync } from 'node:child_process';\nconsole.log(execSync('echo $GREETING; env | sort').toString());",
                ),
                |r| {
                    r.env = BTreeMap::from([("GREETING".into(), "hello there".into())]);
                    r.stdin = Some("piped\n".into());
                },
            ),
            prestarted: true,
        },
        case(
            "a thrown error",
            node,
            "function inner() { throw new Error('boom'); }\nfunction outer() { inner(); }\nconsole.log('before');\nouter();",
        ),
        case(
            "an error thrown later",
            node,
            "setTimeout(() => { throw new TypeError('late'); }, 10);",
        ),
        case(
            "an unhandled rejection",
            node,
            "await Promise.resolve();\nPromise.reject(new RangeError('rejected'));",
        ),
        case("process.exit(3)", node, "console.log('out');\nprocess.exit(3);"),
        case(
            "a signal",
            node,
            "console.log('going');\nprocess.kill(process.pid, 'SIGTERM');\nsetTimeout(() => {}, 5000);",
        ),
        case("a syntax error", node, "console.log('never');\nlet = ;\n"),
        case(
            "process.stdout and stderr interleave",
            node,
            "for (let i = 0; i < 3; i++) { console.log('out', i); console.error('err', i); }",
        ),
        Case {
            name: "imports from /sandbox",
            request: with(
                code(
                    node,
                    "import { x } from './lib.mjs';\nimport { createRequire } from 'node:module';\n\
                     const require = createRequire(import.meta.url);\nconsole.log(x, require('./c.cjs'));",
                ),
                |r| {
                    r.files = BTreeMap::from([
                        ("lib.mjs".into(), "export const x = 41 + 1;\n".into()),
                        ("c.cjs".into(), "module.exports = { main: require.main === module };\n".into()),
                    ])
                },
            ),
            prestarted: true,
        },
        fallback(
            "CommonJS (another extension)",
            with(
                code(
                    node,
                    "console.log(require.main === module, __filename, module.id, process.argv);\nthrow new Error('cjs');",
                ),
                |r| r.file_extension = Some(".cjs".into()),
            ),
        ),
        fallback(
            "NODE_OPTIONS takes effect",
            with(
                code(
                    node,
                    "function deep(n) { return n ? deep(n - 1) : new Error('deep').stack.split('\\n').length; }\nconsole.log(deep(50), process.execArgv);",
                ),
                |r| {
                    r.env = BTreeMap::from([("NODE_OPTIONS".into(), "--stack-trace-limit=3".into())])
                },
            ),
        ),
    ];
    compare(node, cases).await;
}

#[tokio::test]
async fn bash_programs_run_the_same_in_a_prestarted_shell() {
    let sh = Runtime::Bash;
    // Everything a script can see of its shell but the clock, its pid and the pipes' inode
    // numbers and the sandbox uid: variables (SECONDS reads the same, only its `declare -p` form differs; BASH_ARGC
    // is meaningful under extdebug alone; bash leaves an entry in it after sourcing BASH_ENV),
    // the environment, options, traps, functions, aliases, descriptors, limits. Not compared:
    // /proc/$$/environ, which holds what the shell was exec'd with (as for a pre-started python
    // or node); the shell's variables and every child's environment are the run's.
    let probe = "echo \"_=[$_] ?=[$?] 0=[$0] #=[$#] -=[$-] SECONDS=[$SECONDS] LINENO=[$LINENO]\"\n\
        declare -p | grep -vE '^declare -[-a-zA-Z]* (RANDOM|SRANDOM|SECONDS|EPOCHREALTIME|EPOCHSECONDS|BASHPID|BASH_COMMAND|BASH_ARGC|UID|EUID|_)(=|$)'\n\
        echo --- env; env -0 | sort -z | tr '\\0' '\\n' | grep -v '^_='\n\
        tr '\\0' ' ' < /proc/$$/cmdline; echo\n\
        echo --- options; set -o; shopt; trap -p; declare -F; alias; umask; ulimit -a\n\
        echo --- fds; for fd in /proc/$$/fd/*; do printf '%s -> %s\\n' \"${fd##*/}\" \"$(readlink \"$fd\" | sed 's/[0-9]\\+/N/')\"; done\n\
        echo \"FUNCNAME=[${FUNCNAME[*]}] BASH_SOURCE=[${BASH_SOURCE[*]}] BASH_LINENO=[${BASH_LINENO[*]}] BASH_ARGV=[${BASH_ARGV[*]}]\"\n\
        hash; type -a bash; echo \"$BASH $BASH_VERSION $SHLVL $PWD ${OLDPWD-unset} $HOME $PATH\"";
    let cases = vec![
        case("the shell's state", sh, probe),
        Case {
            name: "the run's environment and stdin",
            request: with(code(sh, probe), |r| {
                r.env = BTreeMap::from([
                    ("GREETING".into(), "it's \"quoted\" $HOME `x` \\ \nsecond line".into()),
                    ("EMPTY".into(), String::new()),
                    ("LANG".into(), "C.UTF-8".into()),
                ]);
                r.stdin = Some("piped\n".into());
            }),
            prestarted: true,
        },
        Case {
            name: "stdin, files, exported to children",
            request: with(
                code(
                    sh,
                    "read -r line; echo \"got $line\"; source ./lib.sh; helper; bash -c 'echo child $GREETING $SHLVL'",
                ),
                |r| {
                    r.env = BTreeMap::from([("GREETING".into(), "hi".into())]);
                    r.stdin = Some("piped\n".into());
                    r.files = BTreeMap::from([(
                        "lib.sh".into(),
                        "helper() { echo \"helper from ${BASH_SOURCE[0]} line $LINENO\"; }\n".into(),
                    )]);
                },
            ),
            prestarted: true,
        },
        case("exit 3", sh, "echo out; echo err >&2; exit 3"),
        case("set -e", sh, "set -e\necho before\nfalse\necho never"),
        case(
            "a syntax error",
            sh,
            "echo first\nif then fi\necho never",
        ),
        case("a command not found", sh, "echo a\nno-such-command --flag\necho $?"),
        case("killed by a signal", sh, "echo going; kill -TERM $$; echo never"),
        case(
            "a trap and a subshell",
            sh,
            "trap 'echo trapped $?' EXIT; (exit 4); echo sub $?; f() { echo \"${FUNCNAME[*]} $LINENO\"; }; f",
        ),
        fallback(
            "POSIXLY_CORRECT takes effect",
            with(code(sh, "set -o | grep posix; echo $POSIXLY_CORRECT"), |r| {
                r.env = BTreeMap::from([("POSIXLY_CORRECT".into(), "1".into())])
            }),
        ),
        fallback(
            "SHELLOPTS takes effect",
            with(code(sh, "echo $-; [[ -o xtrace ]] && echo traced"), |r| {
                r.env = BTreeMap::from([("SHELLOPTS".into(), "xtrace".into())])
            }),
        ),
        fallback(
            "the caller's BASH_ENV takes effect",
            with(code(sh, "echo \"main sees $FROM_ENV_FILE\""), |r| {
                r.env = BTreeMap::from([("BASH_ENV".into(), "/sandbox/env.sh".into())]);
                r.files = BTreeMap::from([(
                    "env.sh".into(),
                    "FROM_ENV_FILE=loaded; echo sourced\n".into(),
                )]);
            }),
        ),
        fallback(
            "SHLVL from the caller",
            with(code(sh, "echo $SHLVL"), |r| {
                r.env = BTreeMap::from([("SHLVL".into(), "4".into())])
            }),
        ),
        fallback(
            "another working directory",
            with(code(sh, "pwd; echo $PWD ${OLDPWD-unset}"), |r| {
                r.workdir = Some("/sandbox/sub".into())
            }),
        ),
    ];
    compare(sh, cases).await;
}

/// Two runs of one owner: separate processes, nothing of the first in the second, and no waiting
/// interpreter alive beside a run.
#[tokio::test]
async fn nothing_of_one_run_reaches_the_next_and_no_interpreter_waits_beside_a_run() {
    let engine = engine(true).await;
    let warm_up = ExecutionRequest {
        runtime: Runtime::Python,
        cmd: Some("true".into()),
        ..Default::default()
    };
    run(&engine, &warm_up).await;
    let first = code(
        Runtime::Python,
        "import os, subprocess\nos.isol8_mark = 1\nCOUNTER = 42\nos.environ['LEAK'] = '1'\n\
         open('/tmp/left', 'w').write('x')\nsubprocess.Popen(['sleep', '300'], start_new_session=True)\n\
         print(os.getpid())",
    );
    let (first, first_prestarted) = run(&engine, &first).await;
    assert!(first_prestarted, "{first:?}");
    let check = code(
        Runtime::Python,
        "import os\nprint(os.getpid())\nprint(hasattr(os, 'isol8_mark'), 'COUNTER' in globals(), os.environ.get('LEAK'))\n\
         print(os.listdir('/tmp'), sorted(os.listdir('/sandbox')))\n\
         print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()) == [1, os.getpid()])",
    );
    let (second, second_prestarted) = run(&engine, &check).await;
    assert!(second_prestarted, "{second:?}");
    let lines: Vec<&str> = second.stdout.lines().collect();
    assert_eq!(
        lines.get(1..).map(|l| l.join("\n")).as_deref(),
        Some("False False None\n[] ['.isol8_main.py']\nTrue"),
        "{second:?}"
    );
    assert_ne!(first.stdout.trim(), lines[0], "a new process for every run");
    engine.shutdown().await;
}

/// A program started in a pre-started interpreter takes live stdin and the caller's SIGINT as one
/// started the normal way does.
#[tokio::test]
async fn live_stdin_and_signals_reach_a_prestarted_program() {
    async fn interrupted(engine: &Engine) -> (String, String, i64, bool) {
        let request = code(
            Runtime::Python,
            "import sys, time\nprint('ready', flush=True)\nline = sys.stdin.readline()\n\
             print('got', line.strip(), flush=True)\ntime.sleep(30)",
        );
        let before = engine.pool_stats().prestarted_runs;
        let mut plan = RunPlan::from_request(
            &request,
            &ExecutionOptions::default(),
            &PlanDefaults::default(),
            "test-owner",
        )
        .expect("valid plan");
        plan.live_stdin = true;
        let mut events = engine.execute_stream(plan).await.expect("run");
        let control = events.controller();
        let (mut stdout, mut stderr, mut exit) = (String::new(), String::new(), None);
        let (mut typed, mut interrupted) = (false, false);
        while let Some(event) = events.recv().await {
            match event {
                // Unbuffered output may come a word at a time.
                RunEvent::Stdout { text, .. } => {
                    stdout.push_str(&text);
                    if stdout.contains("ready\n") && !typed {
                        typed = true;
                        control
                            .send(RunControl::Stdin(b"hello\n".to_vec()))
                            .await
                            .unwrap();
                    }
                    if stdout.contains("got hello\n") && !interrupted {
                        interrupted = true;
                        // SIGINT lands at the program's next bytecode: let it reach its sleep
                        // (else the traceback's frame is the print's, now and then).
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        control
                            .send(RunControl::Signal(RunSignal::Interrupt))
                            .await
                            .unwrap();
                    }
                }
                RunEvent::Stderr { text, .. } => stderr.push_str(&text),
                RunEvent::Finished(result) => exit = Some(result.exit_code),
                _ => {}
            }
        }
        let prestarted = engine.pool_stats().prestarted_runs > before;
        (stdout, stderr, exit.expect("a result"), prestarted)
    }
    let (pre, normal) = (engine(true).await, engine(false).await);
    let warm_up = ExecutionRequest {
        runtime: Runtime::Python,
        cmd: Some("true".into()),
        ..Default::default()
    };
    run(&pre, &warm_up).await;
    run(&normal, &warm_up).await;
    let with_prestart = interrupted(&pre).await;
    let without = interrupted(&normal).await;
    assert!(
        with_prestart.3,
        "ran in a pre-started interpreter: {with_prestart:?}"
    );
    assert!(!without.3);
    assert_eq!(with_prestart.2, 130, "{with_prestart:?}");
    assert!(
        with_prestart.1.ends_with("KeyboardInterrupt\n"),
        "{with_prestart:?}"
    );
    assert_eq!(
        (&with_prestart.0, &with_prestart.1, with_prestart.2),
        (&without.0, &without.1, without.2)
    );
    pre.shutdown().await;
    normal.shutdown().await;
}

/// A fresh warm container pre-starts its first run's interpreter as it starts; with the switch
/// off, none does.
#[tokio::test]
async fn fresh_warm_containers_hold_a_prestarted_interpreter_unless_switched_off() {
    for prestart in [true, false] {
        let engine = Engine::connect(EngineConfig {
            pool: PoolConfig {
                size: 1,
                prestart,
                ..PoolConfig::default()
            },
            warm_runtimes: vec![Runtime::Python],
            ..EngineConfig::default()
        })
        .await
        .expect("Docker must be running for these tests");
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine.pool_stats().ready == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (result, prestarted) = run(&engine, &code(Runtime::Python, "print(6 * 7)")).await;
        assert_eq!(result.stdout, "42\n", "{result:?}");
        assert_eq!(prestarted, prestart, "{result:?}");
        engine.shutdown().await;
    }
}
