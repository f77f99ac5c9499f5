//! The system calls std does not wrap, each behind a safe function (the crate's only unsafe code).
#![allow(unsafe_code)]
