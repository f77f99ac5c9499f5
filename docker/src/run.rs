//! The caller's side of a run in progress: its events, live input to its program, and its end.

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};

use crate::engine::RunEvent;

/// Something the caller sends a running program while it runs (the WebSocket route's messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunControl {
    /// More bytes for the program's stdin (a run started with `live_stdin`).
    Stdin(Vec<u8>),
    /// The end of its stdin.
    StdinEof,
    /// A signal to the program's process group.
    Signal(RunSignal),
}

/// The signals a caller may send a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunSignal {
    Interrupt,
    Terminate,
    Kill,
}

impl RunSignal {
    /// From the name a client sends (`SIGINT`, `SIGTERM`, `SIGKILL`).
    pub fn from_name(name: &str) -> Option<RunSignal> {
        match name {
            "SIGINT" => Some(RunSignal::Interrupt),
            "SIGTERM" => Some(RunSignal::Terminate),
            "SIGKILL" => Some(RunSignal::Kill),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RunSignal::Interrupt => "SIGINT",
            RunSignal::Terminate => "SIGTERM",
            RunSignal::Kill => "SIGKILL",
        }
    }
}

/// A run in progress, as its caller holds it. Dropping it cancels the run; its container is then
/// destroyed, never reused.
#[derive(Debug)]
pub struct RunEvents {
    /// Fed by the run task; closed after `RunEvent::Finished` (or when the run is cancelled).
    events: mpsc::Receiver<RunEvent>,
    /// Read by the run task between agent events; a closed sender just stops live input.
    control: mpsc::Sender<RunControl>,
    /// Cancelled when the run task has ended and let go of its sandbox, whether or not the caller
    /// read every event: what holds capacity for the run (an execution slot) waits on this, not
    /// on a client that may never read to the end.
    ended: CancellationToken,
}

/// The run task's side of [`RunEvents`].
#[derive(Debug)]
pub(crate) struct RunSide {
    pub(crate) tx: mpsc::Sender<RunEvent>,
    pub(crate) control: mpsc::Receiver<RunControl>,
    /// Dropped when the run task ends (also if it panics), which signals `RunEvents::ended`.
    pub(crate) ended: DropGuard,
}

/// The two ends of a new run.
pub(crate) fn run_channels() -> (RunSide, RunEvents) {
    // Bounded: a slow consumer slows the run's output, and past the run's deadline loses it (see
    // `Run::emit_output`), so it can neither grow memory nor hold the run past its timeout.
    let (tx, events) = mpsc::channel(64);
    let (control_tx, control) = mpsc::channel(64);
    let ended = CancellationToken::new();
    (
        RunSide {
            tx,
            control,
            ended: ended.clone().drop_guard(),
        },
        RunEvents {
            events,
            control: control_tx,
            ended,
        },
    )
}

impl RunEvents {
    /// The next event; `None` after the last.
    pub async fn recv(&mut self) -> Option<RunEvent> {
        self.events.recv().await
    }

    /// A sender of live input to the program (for a caller that reads events elsewhere).
    pub fn controller(&self) -> mpsc::Sender<RunControl> {
        self.control.clone()
    }

    /// Resolves once the run has ended and released its sandbox.
    pub fn ended(&self) -> WaitForCancellationFutureOwned {
        self.ended.clone().cancelled_owned()
    }
}
