//! `warrenctl` against a real broker: readable tables, `--json` that parses, one-line errors
//! with a non-zero exit, and help that shows an example for every command.

use std::process::{Command, Output};
use warren_tests::{warrenctl_binary, Warren};

fn ctl(warren: &Warren, args: &[&str]) -> Output {
    Command::new(warrenctl_binary())
        .arg("--server")
        .arg(warren.admin_url())
        .args(args)
        .output()
        .expect("running warrenctl")
}

/// Runs a command that must succeed; its stdout.
fn ok(warren: &Warren, args: &[&str]) -> String {
    let out = ctl(warren, args);
    assert!(
        out.status.success(),
        "warrenctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn main_commands_print_tables_and_json() {
    let warren = Warren::start();
    let declared = ok(
        &warren,
        &["declare", "queue", "orders", "--arg", "x-max-length=50"],
    );
    assert_eq!(
        declared.trim(),
        "queue 'orders' declared (0 ready, 0 consumers)"
    );
    ok(
        &warren,
        &["declare", "exchange", "events", "--type", "topic"],
    );
    ok(&warren, &["bind", "events", "orders", "-k", "order.*"]);
    let routed = ok(
        &warren,
        &[
            "publish",
            "events",
            "order.new",
            "hello world",
            "--persistent",
            "--confirm",
            "--header",
            "source=cli",
        ],
    );
    assert_eq!(routed.trim(), "routed to orders (confirmed)");

    let queues = ok(&warren, &["list", "queues"]);
    let mut lines = queues.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "VHOST",
            "NAME",
            "TYPE",
            "READY",
            "UNACKED",
            "CONSUMERS",
            "IN",
            "OUT",
            "DISK",
            "STATE"
        ]
    );
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    assert_eq!(&row[..6], ["/", "orders", "classic", "1", "0", "0"]);
    assert_eq!(row.last(), Some(&"running"));

    let peeked = ok(&warren, &["peek", "orders"]);
    assert!(
        peeked.contains("hello world") && peeked.contains("source=cli"),
        "{peeked}"
    );
    assert!(peeked.trim_end().ends_with("1 ready left"), "{peeked}");

    let overview = ok(&warren, &["overview"]);
    assert!(
        overview
            .lines()
            .any(|l| l.starts_with("queues") && l.trim_end().ends_with(" 1")),
        "{overview}"
    );
    assert!(
        overview.contains(&format!("amqp              {}", warren.addr)),
        "{overview}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(&warren, &["--json", "list", "queues"])).expect("valid JSON");
    assert_eq!(json["queues"][0]["name"], "orders");
    assert_eq!(json["queues"][0]["ready"], 1);
    let peek_json: serde_json::Value =
        serde_json::from_str(&ok(&warren, &["--json", "peek", "orders"])).expect("valid JSON");
    assert_eq!(peek_json["messages"][0]["body"], "hello world");

    let exported: serde_json::Value =
        serde_json::from_str(&ok(&warren, &["export"])).expect("definitions JSON");
    assert_eq!(exported["queues"][0]["name"], "orders");
    let file = warren.data_dir.with_file_name("defs.json");
    std::fs::write(&file, exported.to_string()).expect("write");
    let fresh = Warren::start();
    let imported = ok(&fresh, &["import", file.to_str().expect("path")]);
    assert!(imported.contains("1 queues, 1 bindings"), "{imported}");

    let moved = {
        ok(&warren, &["declare", "queue", "orders.dlq"]);
        ok(&warren, &["move", "orders", "orders.dlq"])
    };
    assert_eq!(
        moved.trim(),
        "moved 1 messages from 'orders' to 'orders.dlq'"
    );
    let taken = ok(&warren, &["get", "orders.dlq"]);
    assert!(taken.contains("hello world"));
    assert!(taken.trim_end().ends_with("0 ready left"));
}

#[test]
fn errors_are_one_line_with_a_non_zero_exit() {
    let warren = Warren::start();
    let cases: [(&[&str], &str); 4] = [
        (
            &["delete", "queue", "missing"],
            "error: NotFound: no queue 'missing' in vhost '/'",
        ),
        (
            &["--password", "wrong", "overview"],
            "error: Unauthenticated: invalid credentials",
        ),
        (
            &["declare", "exchange", "x", "--type", "bogus"],
            "error: InvalidArgument: unknown exchange type 'bogus'",
        ),
        (
            &["--vhost", "nowhere", "purge", "q"],
            "error: NotFound: no vhost 'nowhere'",
        ),
    ];
    for (args, expected) in cases {
        let out = ctl(&warren, args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end(), expected, "{args:?}");
        assert_eq!(stderr.trim_end().lines().count(), 1);
        assert!(out.stdout.is_empty());
    }
    let unreachable = Command::new(warrenctl_binary())
        .args(["--server", "http://127.0.0.1:1", "overview"])
        .output()
        .expect("run");
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        stderr.starts_with("error: cannot reach http://127.0.0.1:1"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1);
}

#[test]
fn help_shows_an_example_for_every_command() {
    let out = Command::new(warrenctl_binary())
        .arg("--help")
        .output()
        .expect("run");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).expect("utf-8");
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("Options:").next())
        .expect("a command list")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("help "))
        .collect();
    assert!(commands.len() >= 20, "{help}");
    for line in commands {
        assert!(line.contains("e.g. `warrenctl "), "no example: {line}");
    }
    assert!(help.contains("Examples:"));
}
