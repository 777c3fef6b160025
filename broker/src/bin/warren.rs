//! The `warren` server binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "warren: the AMQP server is not built yet; this checkout holds the storage engine \
         (crate warren-storage). The broker arrives with the single-node broker issue."
    );
    ExitCode::from(2)
}
