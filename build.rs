//! Embeds a build id as the `THINGPLUS_GW_BUILD` environment variable of the
//! crate (shown by `--version`, `swInfo` and `status`):
//!
//! 1. `THINGPLUS_GW_BUILD_ID` when set and not empty (packagers, CI);
//! 2. else the git commit of this source tree, `git rev-parse --short HEAD`,
//!    with `-dirty` when tracked files differ from it;
//! 3. else `unknown` (a source tarball without git).
//!
//! The script reruns only when the variable changes or HEAD moves (a commit,
//! a checkout): it watches `HEAD`, the branch ref it points to and
//! `packed-refs`. So the dirty flag says how the tree was when HEAD last
//! moved; editing files alone does not rerun it, which keeps ordinary
//! rebuilds incremental.

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
        Ok(id) if !id.trim().is_empty() => sanitize(id.trim()),
        _ => git_build(&manifest).unwrap_or_else(|| "unknown".to_string()),
    };
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
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
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
    if hash.is_empty() {
        return None;
    }
    let dirty = git(manifest, &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}
