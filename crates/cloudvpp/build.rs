//! Puts the commit the binary was built from into `cloudvpp --version`.

use std::process::Command;

fn main() {
    // Re-run when the checked-out commit moves (a commit, a checkout, a pull).
    for path in [
        "../../.git/HEAD",
        "../../.git/refs/heads",
        "../../.git/packed-refs",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=CLOUDVPP_COMMIT");
    // An empty CLOUDVPP_COMMIT (a container build given none) counts as unset.
    let given = std::env::var("CLOUDVPP_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = given.or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    });
    // A build from a source archive has no repository: it says so instead of guessing.
    println!(
        "cargo:rustc-env=CLOUDVPP_COMMIT={}",
        commit.unwrap_or_else(|| "unknown commit".into())
    );
}
