use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match lanparty_lite::cli::run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("lanparty-lite: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}
