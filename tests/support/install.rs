//! Installs pinned third-party packages for tests that run them (`npm ci`, `pip install
//! --target`), once per lock file: a stamp next to the installed tree says which lock file
//! (and runtime version) it came from, and an install is built in a staging directory and
//! renamed into place, so concurrent test processes never see half of one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// `dir/node_modules` from `dir/package-lock.json` (`npm ci --ignore-scripts`), unless it is
/// already installed from that lock file with this Node.js. `hint` says how to get Node.js and
/// npm when they are missing.
pub fn npm_ci(dir: &Path, hint: &str) -> Result<(), String> {
    let node = tool_version("node", &["--version"]).map_err(|e| format!("{e}\n{hint}"))?;
    let npm = tool_version("npm", &["--version"]).map_err(|e| format!("{e}\n{hint}"))?;
    let lock = read(&dir.join("package-lock.json"))?;
    let stamp = format!("node {node}\n{lock}");
    install_once(dir, "node_modules", &stamp, |staging| {
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(dir.join(file), staging.join(file)).map_err(|e| format!("copy {file}: {e}"))?;
        }
        let mut cmd = Command::new("npm");
        cmd.args(["ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]).current_dir(staging);
        run_installer(cmd, &format!("npm ci in {} (npm {npm})", dir.display()))?;
        Ok(staging.join("node_modules"))
    })
}

/// Makes `dir/name` hold what `install` builds, unless its stamp file already says `stamp`.
///
/// `install` works in a fresh staging directory under `dir` and returns the path of the built
/// tree, which is then renamed into place, so concurrent test processes never see half an
/// install: the first rename wins and the others find the right stamp.
pub fn install_once(
    dir: &Path,
    name: &str,
    stamp: &str,
    install: impl FnOnce(&Path) -> Result<PathBuf, String>,
) -> Result<(), String> {
    let dest = dir.join(name);
    let stamp_of = |tree: &Path| std::fs::read_to_string(tree.join(".pgtenant-stamp")).ok();
    if stamp_of(&dest).as_deref() == Some(stamp) {
        return Ok(());
    }
    let staging = dir.join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("create {}: {e}", staging.display()))?;
    let result = install(&staging).and_then(|built| {
        std::fs::write(built.join(".pgtenant-stamp"), stamp).map_err(|e| format!("write stamp: {e}"))?;
        if dest.exists() && stamp_of(&dest).as_deref() != Some(stamp) {
            std::fs::remove_dir_all(&dest).map_err(|e| format!("remove stale {}: {e}", dest.display()))?;
        }
        match std::fs::rename(&built, &dest) {
            Ok(()) => Ok(()),
            Err(_) if stamp_of(&dest).as_deref() == Some(stamp) => Ok(()),
            Err(e) => Err(format!("rename {} to {}: {e}", built.display(), dest.display())),
        }
    });
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// The first line `program args` prints, or why it could not be run.
pub fn tool_version(program: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(program).args(args).stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            Ok(text.lines().next().unwrap_or_default().trim().to_string())
        }
        Ok(out) => Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("`{program}` could not be run: {e}")),
    }
}

/// Runs an installer command, failing with its output when it fails.
pub fn run_installer(mut cmd: Command, what: &str) -> Result<(), String> {
    let started = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{what}: could not run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!("{what}: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Reads a text file, or says which one could not be read.
pub fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))
}
