//! Surgery on a pretrained network: replace every depthwise filter by its
//! best `a * key + b` fit to a bank, and measure, without labels, how much of
//! the network's behaviour survives (agreement with the original network on
//! a set of images).
//!
//! The network is EfficientNet-Lite0 (ImageNet-1k) run in burn on the CPU
//! backend; weights come from its real PyTorch file.

pub mod efficientnet_lite0;
pub mod images;
pub mod plot;
pub mod probe;
pub mod replace;
pub mod scorer;
pub mod state_dict;
pub mod sweep;

pub use efficientnet_lite0::EfficientNetLite0;
pub use probe::{probe_agreement, Agreement, ImageSet, Probe};
pub use replace::{replace_model, LayerFit};
pub use scorer::ProbeScorer;
pub use state_dict::StateDict;

/// The CPU backend every command runs on (burn `flex`).
pub type Cpu = burn::backend::Flex;
