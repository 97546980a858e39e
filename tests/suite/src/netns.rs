//! The namespace helpers live in lb-lab (the demo uses them too).
pub use lb_lab::netns::*;
