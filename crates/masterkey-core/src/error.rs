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
    /// A message spread over lines (a parser's trace, say) is joined into one.
    pub fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Invalid { path: path.into(), message: one_line(&message.into()) }
    }
}

/// `text` on one line: its non-empty lines trimmed (a trailing full stop
/// dropped) and joined by `, `.
pub fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(|l| l.trim().trim_end_matches('.')).filter(|l| !l.is_empty()).collect();
    lines.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_over_several_lines_becomes_one() {
        let trace =
            "Range [228896, 228900) is out of bounds.\n\twhile verifying table field `operator_codes` at position 32\n";
        let e = Error::invalid("m.tflite", format!("expected a valid TFLite flatbuffer, found a corrupt one: {trace}"));
        assert_eq!(
            e.to_string(),
            "m.tflite: expected a valid TFLite flatbuffer, found a corrupt one: Range [228896, 228900) is out of \
             bounds, while verifying table field `operator_codes` at position 32"
        );
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
