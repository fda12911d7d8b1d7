//! Helper processes for the kill -9 tests: the running test binary started
//! again as one of its own ignored tests (a server, an app), and killed with
//! SIGKILL when the test is done with it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A helper process; killed (SIGKILL) and reaped on drop.
pub struct Helper {
    child: Child,
}

impl Helper {
    /// Runs the ignored test `test` of the current test binary with `env`,
    /// and reads its stdout until a line ends with `ready`. Returns the
    /// helper and the lines before that one, or, when the output ended first,
    /// `Err` with the lines (the helper is killed then).
    pub fn start(
        test: &str,
        env: &[(&str, &str)],
        ready: &str,
    ) -> Result<(Helper, Vec<String>), Vec<String>> {
        let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
        cmd.args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the helper process starts");
        let out = child.stdout.take().expect("piped");
        let mut helper = Helper { child };
        let mut lines = Vec::new();
        // (The harness prints `test <name> ... ` without a newline first.)
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.ends_with(ready) {
                return Ok((helper, lines));
            }
            lines.push(line);
        }
        helper.kill();
        Err(lines)
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and waits for the process to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.kill();
    }
}
