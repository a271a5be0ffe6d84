use std::path::PathBuf;

/// Errors name the file involved and say what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is in the message, not a separate source, so that an error
    /// chain printed in full does not say it twice.
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause: source }
    }
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Invalid { path: path.into(), message: message.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
