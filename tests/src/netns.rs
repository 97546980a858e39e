//! The namespace helpers live in lb-userspace (the demo uses them too).
pub use lb_userspace::lab::netns::*;
