//! hsipc's transports and the engine shared by every adapter (work in progress).
