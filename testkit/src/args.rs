//! The command line of a benchmark (`node/examples/`), parsed by clap the same way in each.

use clap::error::ErrorKind;

/// Parses the process's arguments into `T`. `--help` prints the help and exits 0; any bad argument
/// prints clap's error followed by the usage line and exits 2, never a panic.
pub fn parse_args<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|e| {
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            e.exit()
        }
        let _ = e.print();
        // clap names the usage for some errors (an unknown argument) but not for others (a bad value).
        if !e.render().to_string().contains("Usage:") {
            eprintln!("\n{}", T::command().render_usage());
        }
        std::process::exit(2)
    })
}
