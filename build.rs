//! Embeds a build id as the `THINGPLUS_GW_BUILD` environment variable of the
//! crate (shown by `--version`, `swInfo` and `status`):
//!
//! 1. `THINGPLUS_GW_BUILD_ID` when set and not empty (packagers, CI), with
//!    unprintable characters dropped (`unknown` if nothing is left);
//! 2. else the git commit of this source tree, `git rev-parse --short HEAD`
//!    (only when the crate directory is the repository's top level);
//! 3. else `unknown` (a source tarball without git).
//!
//! There is no "dirty" flag: the script reruns only when the variable
//! changes or HEAD moves (a commit, a checkout, a reset), not when files
//! are edited (which keeps ordinary rebuilds incremental), so it could
//! only tell how the tree was when HEAD last moved. It watches `HEAD`, the
//! branch ref it points to, `packed-refs` and HEAD's reflog `logs/HEAD`
//! (written at every move of HEAD, also once `git gc` has packed the
//! branch ref so that the loose ref no longer exists).

use std::path::{Path, PathBuf};
use std::process::Command;

const ENV: &str = "THINGPLUS_GW_BUILD_ID";

fn main() {
    println!("cargo:rerun-if-env-changed={ENV}");
    // Without any rerun-if-changed line cargo would rerun the script on every
    // change in the package; this line (re-printed below for git) prevents that.
    println!("cargo:rerun-if-changed=build.rs");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let build = match std::env::var(ENV) {
        // Given, but nothing printable is left of it: not a guess from git.
        Ok(id) if !id.trim().is_empty() => {
            Some(sanitize(&id).trim().to_string()).filter(|id| !id.is_empty())
        }
        _ => git_build(&manifest),
    }
    .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=THINGPLUS_GW_BUILD={build}");
}

/// One line of printable ASCII, bounded: it ends up in logs and replies.
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        // Never write the index (`git status` refreshes it otherwise), so
        // running this script changes nothing git or cargo could notice.
        .env("GIT_OPTIONAL_LOCKS", "0")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_build(manifest: &Path) -> Option<String> {
    // Only this project's own repository: a copy of the crate inside some
    // other repository must not take that one's commit.
    let top = git(manifest, &["rev-parse", "--show-toplevel"])?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(Path::new(&top), manifest) {
        return None;
    }
    // Watch what moves when HEAD does (worktree-aware paths).
    let mut watched = vec![
        "HEAD".to_string(),
        "packed-refs".to_string(),
        "logs/HEAD".to_string(),
    ];
    if let Some(r) = git(manifest, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(r);
    }
    for w in &watched {
        if let Some(p) = git(manifest, &["rev-parse", "--git-path", w]) {
            let p = manifest.join(p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    let hash = git(manifest, &["rev-parse", "--short", "HEAD"])?;
    (!hash.is_empty()).then_some(hash)
}
