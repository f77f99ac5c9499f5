//! Standard output for every command: a reader that goes away (`isol8 … | head -1`) ends the
//! process quietly with status 0, as `cat` or `ls` would, instead of a "Broken pipe" panic.

use std::io::{ErrorKind, Write};

/// Writes `bytes` to stdout and flushes. A closed pipe exits with status 0; other write errors
/// (a full disk behind a redirect) are reported once and exit with status 1.
pub(crate) fn write_stdout(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("[ERR] cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`write_stdout`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}
pub(crate) use outln;
