//! The background pipeline (issue 3).
