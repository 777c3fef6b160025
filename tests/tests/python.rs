//! Runs the pika suite (`tests/python/`) and the pattern examples (`examples/`) against real
//! brokers. Needs Python 3 with `tests/python/requirements.txt` installed (`.ci/run` does it).

use std::process::Command;
use warren_tests::{warren_binary, workspace_root};

#[test]
fn pika_suite_and_examples_pass() {
    let root = workspace_root();
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import pika, pytest"])
        .status()
        .expect("running python3");
    assert!(
        probe.success(),
        "pika and pytest are missing: pip install -r tests/python/requirements.txt"
    );
    let output = Command::new(&python)
        .current_dir(&root)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/python",
        ])
        .env("WARREN_BIN", warren_binary())
        .output()
        .expect("running pytest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "pytest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
