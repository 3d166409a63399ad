//! Reporting: run events and the terminal/plain reporter.
