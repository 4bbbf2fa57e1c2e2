//! The Python client (`clients/python`) and the agent examples (`examples/`) against the real
//! service: runs the client's pytest suite, whose fixtures start their own `redis-server` and
//! this build's `approvals` binary on free ports (no mocks). `scripts/test.sh` installs the
//! client, pytest, LangGraph and the OpenAI Agents SDK into the `.tools` venv and exports
//! `CLIENT_PYTHON` (not an `APPROVALS_…` name: the service reads those as its configuration).

use std::path::Path;
use std::process::Command;

#[test]
fn the_python_client_and_the_examples_pass_their_tests_against_the_service() {
    let python = approvals_testkit::tool("CLIENT_PYTHON", "python");
    let probe = Command::new(&python)
        .args([
            "-c",
            "import approvals_client, pytest, anyio, langgraph, agents",
        ])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{} cannot import the Python client's test dependencies: run scripts/test.sh, which \
             installs them into .tools and exports CLIENT_PYTHON\n{}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(error) => panic!(
            "no Python at {} ({error}): run scripts/test.sh, which installs the client's test \
             dependencies into .tools and exports CLIENT_PYTHON",
            python.display()
        ),
    }
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let run = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&client)
        .env("APV_BIN", env!("CARGO_BIN_EXE_approvals"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("pytest runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}");
    assert!(
        run.status.success(),
        "the Python client's tests failed:\n{stdout}\n{stderr}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" passed") && !summary.contains("skipped"),
        "every Python test must run: {summary}"
    );
}
