//! The plain data types at the boundaries of masterkey's analysis pipeline —
//! depthwise layers read from models, filter sets with per-filter provenance,
//! banks of keys — and the `a*key + b` fit that connects them.
//!
//! Conventions (fixed here, relied on everywhere): a filter is `h x w` f32,
//! row-major, row 0 at the top, column 0 at the left, applied by
//! cross-correlation as PyTorch's `conv2d` does. Its normalised form has zero
//! mean and unit L2 norm; a filter whose centred L2 norm is below a tolerance
//! is "dead" and is never normalised.

pub mod atomic;
pub mod bank;
pub mod error;
pub mod fit;
pub mod kernel;
pub mod layer;
pub mod rng;
pub mod safetensors_out;
pub mod set;

pub use bank::{Bank, RESIZE_RULE};
pub use error::{one_line, Error, Result};
pub use fit::{fit_set, FilterFit, FitOptions, FitReport};
pub use kernel::KernelSize;
pub use layer::{DwLayer, ModelFilters};
pub use set::{FilterSet, Provenance, SizeGroup};

/// `NAMES`, `name()`, `Display` and `FromStr` for a plain enum whose values
/// are spelled in kebab case on the command line and in saved settings.
#[macro_export]
macro_rules! kebab_enum {
    ($ty:ty, $($variant:ident = $name:literal),+) => {
        impl $ty {
            pub const NAMES: &'static [&'static str] = &[$($name),+];
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(Self::$variant),)+
                    _ => Err(format!("unknown value `{s}`; expected one of {}", Self::NAMES.join(", "))),
                }
            }
        }
    };
}
