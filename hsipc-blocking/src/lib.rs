//! hsipc for blocking code (work in progress).
