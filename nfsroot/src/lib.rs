//! Diskless-boot configuration and images.
