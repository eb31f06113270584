//! Version control systems repovault can back up.

pub mod git;
