//! Reading files as they were at a git ref, through the `git` command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::CliError;

/// The repository around the current directory, at one commit.
#[derive(Debug, Clone)]
pub struct GitTree {
    root: PathBuf,
    reference: String,
}

impl GitTree {
    /// The repository containing the current directory, at `reference` (a branch, tag, commit
    /// or anything `git rev-parse` takes).
    pub fn open(reference: &str) -> Result<Self, CliError> {
        if reference.is_empty() || reference.starts_with('-') {
            return Err(CliError::Usage(format!(
                "--against `{reference}`: expected a git ref such as HEAD, main or origin/main"
            )));
        }
        let root = git(None, &["rev-parse", "--show-toplevel"])?;
        let root = PathBuf::from(root.trim());
        let root = root.canonicalize().unwrap_or(root);
        let tree = Self {
            root,
            reference: reference.to_owned(),
        };
        git(
            Some(&tree.root),
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{reference}^{{commit}}"),
            ],
        )
        .map_err(|_| CliError::Usage(format!("--against `{reference}`: no such git ref")))?;
        Ok(tree)
    }

    /// The ref given.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// `path` (on disk, relative to the current directory or absolute) relative to the
    /// repository root, with `/` separators.
    pub fn relative(&self, path: &Path) -> Result<String, CliError> {
        let absolute = path.canonicalize().map_err(|e| CliError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let relative = absolute.strip_prefix(&self.root).map_err(|_| {
            CliError::Usage(format!(
                "{}: not inside the git repository at {}",
                path.display(),
                self.root.display()
            ))
        })?;
        Ok(relative.to_string_lossy().replace('\\', "/"))
    }

    /// Paths (relative to the repository root) of every file under `dir` at the ref.
    pub fn files_under(&self, dir: &str) -> Result<Vec<String>, CliError> {
        let listing = git(
            Some(&self.root),
            &["ls-tree", "-r", "--name-only", &self.reference, "--", dir],
        )?;
        Ok(listing.lines().map(str::to_owned).collect())
    }

    /// The text of `path` (relative to the repository root) at the ref, or `None` when the
    /// ref has no such file.
    pub fn read(&self, path: &str) -> Result<Option<String>, CliError> {
        let listed = git(
            Some(&self.root),
            &["ls-tree", "--name-only", &self.reference, "--", path],
        )?;
        if listed.trim().is_empty() {
            return Ok(None);
        }
        git(
            Some(&self.root),
            &["show", &format!("{}:{path}", self.reference)],
        )
        .map(Some)
    }
}

/// Runs git (in `dir`, or the current directory) and returns its standard output.
fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, CliError> {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    let failed = |message: String| CliError::Git {
        command: args.join(" "),
        message,
    };
    let output = command
        .args(args)
        .output()
        .map_err(|e| failed(format!("cannot run git: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failed(match stderr.trim() {
            "" => format!("exited with {}", output.status),
            message => message.to_owned(),
        }));
    }
    String::from_utf8(output.stdout).map_err(|e| failed(format!("output is not UTF-8: {e}")))
}
