//! One problem in one file of a policy set (a load error or a warning), with file, line and
//! column where the source has them, the policy id and a hint. Shared by the loader, the route
//! table and the mapping's schema checks, so that none of them imports another for it.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in one file of a policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    /// 1-based line and column, where the source has them.
    pub position: Option<(usize, usize)>,
    pub policy_id: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub(crate) fn in_file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            position: None,
            policy_id: None,
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)?;
        // Cedar's own messages often name the policy already ("for policy `x`, …").
        if let Some(id) = &self.policy_id
            && !self.message.contains(&format!("`{id}`"))
        {
            write!(f, " (policy `{id}`)")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n    hint: {hint}")?;
        }
        Ok(())
    }
}
