//! `lrpmctl`: the control client of a running lrpm. See `lrpmctl --help`.

fn main() -> std::process::ExitCode {
    lrpm::ctl::run(std::env::args_os())
}
