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
        Signal::Cont => S::CONT,
        Signal::Stop => S::STOP,
        Signal::Ttin => S::TTIN,
        Signal::Ttou => S::TTOU,
        Signal::Winch => S::WINCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lrpm-core may not depend on nix, so it keeps its own table of signal
    /// names: nix is the authority it must agree with, on every signal nix
    /// knows on this platform.
    #[test]
    fn the_core_names_every_signal_as_nix_does() {
        use lrpm_core::human::signal_name;
        let mut checked = 0;
        for signal in nix::sys::signal::Signal::iterator() {
            assert_eq!(
                signal_name(signal as i32).to_string(),
                signal.as_str(),
                "signal {}",
                signal as i32
            );
            checked += 1;
        }
        assert!(checked >= 31, "nix knows {checked} signals");
        // And glibc's real-time range.
        #[cfg(target_env = "gnu")]
        {
            assert_eq!(signal_name(libc::SIGRTMIN()).to_string(), "SIGRTMIN");
            assert_eq!(signal_name(libc::SIGRTMIN() + 1).to_string(), "SIGRTMIN+1");
            assert_eq!(signal_name(libc::SIGRTMAX()).to_string(), "SIGRTMAX");
        }
        // The core's own signals, which the shell sends, too.
        for signal in Signal::ALL {
            assert_eq!(
                signal_name(to_rustix(signal).as_raw()).to_string(),
                signal.to_string()
            );
        }
    }
}
