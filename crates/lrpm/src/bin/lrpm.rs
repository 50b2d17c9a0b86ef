//! `lrpm`: the supervisor. See `lrpm --help`.

fn main() -> std::process::ExitCode {
    lrpm::run(std::env::args_os())
}
