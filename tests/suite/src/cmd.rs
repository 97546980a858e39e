//! Running a program a test depends on: a failure is the test's failure, with the command
//! and everything it printed.

use std::process::{Command, Output};

/// Run `cmd`, panicking with its output unless it exits successfully.
pub fn checked(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `checked`, and what it printed on stdout.
pub fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&checked(cmd).stdout).into_owned()
}
