/// A model, kernel size or bank that the scale-space tools cannot work with;
/// the message says what was expected and what was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

pub type Result<T, E = InvalidInput> = std::result::Result<T, E>;
