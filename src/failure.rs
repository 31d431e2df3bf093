//! Why a command failed, and the stable exit code for each kind of failure.

use std::fmt;

use crate::control::ControlError;

/// A command's failure; [`Failure::exit_code`] maps it to the documented exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad command line (unknown flag, missing argument): exit 2.
    Usage(String),
    /// A value the user gave is invalid (join code, subnet, name, MTU): exit 3.
    Input(String),
    /// The control plane refused or could not be used: exit 4.
    Control(ControlError),
    /// Permissions, the state directory or the tun device: exit 5.
    System(String),
    /// The UDP port is in use or the network refused: exit 6.
    Network(String),
    /// No member is running for this state directory: exit 7.
    NotRunning(String),
    /// A member of another party runs with this state directory: exit 8.
    AlreadyRunning(String),
    /// A background member failed to start with this exit code and message.
    Background(u8, String),
}

impl Failure {
    /// The process exit code for this failure (documented in the README; keep stable).
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Input(_) => 3,
            Failure::Control(_) => 4,
            Failure::System(_) => 5,
            Failure::Network(_) => 6,
            Failure::NotRunning(_) => 7,
            Failure::AlreadyRunning(_) => 8,
            Failure::Background(code, _) => *code,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m)
            | Failure::Input(m)
            | Failure::System(m)
            | Failure::Network(m)
            | Failure::NotRunning(m)
            | Failure::AlreadyRunning(m)
            | Failure::Background(_, m) => f.write_str(m),
            Failure::Control(e) => write!(f, "{e}"),
        }
    }
}

impl From<ControlError> for Failure {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Invalid(why) => Failure::Input(why),
            other => Failure::Control(other),
        }
    }
}
