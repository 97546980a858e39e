//! Test hosts in network namespaces, shared by the demo and the test suite.

pub mod netns;
