//! The core's signals as the platform's.

use lrpm_core::job::Signal;

/// Maps a core signal to the platform's.
pub fn to_rustix(signal: Signal) -> rustix::process::Signal {
    use rustix::process::Signal as S;
    match signal {
        Signal::Hup => S::HUP,
        Signal::Int => S::INT,
        Signal::Quit => S::QUIT,
        Signal::Kill => S::KILL,
        Signal::Usr1 => S::USR1,
        Signal::Usr2 => S::USR2,
        Signal::Alrm => S::ALARM,
        Signal::Term => S::TERM,
        Signal::Winch => S::WINCH,
    }
}
